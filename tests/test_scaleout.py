"""Scale-out: three `consume` processes in one group write one DuckLake (a real PostgreSQL catalog,
Parquet files in a shared folder) from one topic with six partitions, through a SIGKILL and a
restart of one of them, while a fourth process reads the lake and an operator runs `fit` on it.

Each produced event must appear in the lake exactly once, the reader must see rows while the
consumers run, and every instance must pick up the fit made during the run (no restart).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_stream import (GROUP, ROOT, broker, committed, make_topics, produce,  # noqa: F401
                         simulated, stop)

PARTITIONS = 6


def lake_env(data: Path, poll_seconds: float = 1.0) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SYSMON_BLT_LAKE_DATA_PATH": str(data),
            "SYSMON_BLT_KAFKA_SESSION_TIMEOUT_MS": "6000", "SYSMON_BLT_STREAM_BATCH_MS": "100",
            "SYSMON_BLT_STREAM_BATCH_SIZE": "64", "SYSMON_BLT_LEARNING_EVENTS": "0",
            "SYSMON_BLT_COLD_START": "shipped", "SYSMON_BLT_WORKERS": "0",
            "SYSMON_BLT_FIT_POLL_SECONDS": str(poll_seconds)}


def start(bootstrap: str, db: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """One instance; its stderr (JSON log lines) goes to ``log`` so the test can read it."""
    return subprocess.Popen(
        [sys.executable, "-m", "plugin.cli", "consume", "--bootstrap", bootstrap, "--topic",
         "sysmon", "--group", GROUP, "--db", db, "-v"],
        stdout=subprocess.PIPE, stderr=log.open("a"), text=True, env=env, cwd=ROOT)


def wait_for(what, done, procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"an instance exited with {p.returncode} while waiting {what}"
        if done():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting {what}")


def cli(db: str, env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "plugin.cli", *args, "--db", db], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


READER = """
import json, sys
from plugin.store import open_store
s = open_store(sys.argv[1], read_only=True)
print(json.dumps(s._run("SELECT count(*), count(DISTINCT source) FROM events")[0]))
"""


def lake_rows(db: str, env: dict[str, str]) -> tuple[int, int]:
    """(events, partitions with events) as a separate, read-only process sees them."""
    import json

    out = subprocess.run([sys.executable, "-c", READER, db], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    n, sources = json.loads(out.stdout.strip().splitlines()[-1])
    return n, sources


def test_three_consumers_one_lake_sigkill_fit_pickup_exactly_once(broker, pg_server, tmp_path):
    make_topics(broker, "sysmon", partitions=PARTITIONS)
    first = simulated(1500, seed=21, anomaly_rate=0.02)
    second = simulated(900, seed=22, anomaly_rate=0.02)
    produce(broker, "sysmon", first)
    db = "ducklake:postgres:" + pg_server.create_database("scaleout")
    env = lake_env(tmp_path / "data")
    logs = [tmp_path / f"consumer-{i}.log" for i in range(3)]
    procs = [start(broker, db, env, logs[i]) for i in range(3)]
    try:
        wait_for("for the first commits", lambda: committed(broker, PARTITIONS) >= 200, procs, 300)
        procs[0].kill()  # SIGKILL: no drain, no commit; its partitions move to the others
        procs[0].wait()
        procs[0] = start(broker, db, env, logs[0])
        n, _ = lake_rows(db, env)  # a fourth process reads while the consumers write
        assert n > 0
        wait_for("for the first wave", lambda: committed(broker, PARTITIONS) >= len(first), procs, 600)
        cli(db, env, "fit")  # an operator fits on the shared lake while the consumers run
        time.sleep(3)  # longer than the instances' fit poll
        produce(broker, "sysmon", second)
        total = len(first) + len(second)
        wait_for("for everything", lambda: committed(broker, PARTITIONS) >= total, procs, 600)
        n, sources = lake_rows(db, env)
        assert n == total and sources >= 3  # keyed by computer: the hosts hash to most partitions
    finally:
        outs = []
        for p in procs:
            if p.poll() is None:
                outs.append(stop(p, timeout=60))
    assert all(rc == 0 for rc, _, _ in outs), [e for _, _, e in outs]
    reader = open_lake(db, tmp_path)
    n, distinct = reader._run("SELECT count(*), count(DISTINCT event_key) FROM events")[0]
    assert n == distinct == total  # nothing lost, nothing doubled across the SIGKILL
    # the second wave was scored under the new fit on every partition it reached
    versions = dict(reader._run(
        "SELECT e.source, min(a.version) FROM events e JOIN assignments a USING (event_key) "
        "WHERE a.model = 'blt' AND e.event_key IN (SELECT unnest(?)) GROUP BY e.source",
        [second_keys(second)]))
    assert len(versions) >= 3 and all(v >= 1 for v in versions.values()), versions
    picked = sum("fit_picked_up" in log.read_text() for log in logs)
    assert picked == 3, "every instance logs the new fit it switched to"
    reader.close()


def open_lake(db: str, tmp_path: Path):
    from plugin.store import open_store

    return open_store(db, read_only=True, data_path=str(tmp_path / "data"))


def second_keys(records: list[tuple[bytes, bytes]]) -> list[str]:
    """The event keys of produced records, as the normalizer derives them."""
    from plugin.normalize.normalizer import Normalizer
    from plugin.normalize.schema import load_schemas
    from plugin.sources.base import RawRecord

    norm = Normalizer(load_schemas(None))
    keys = []
    for i, (_, value) in enumerate(records):
        ev = norm(RawRecord(source="x", position=i, data=value))
        keys.append(ev.event_key)
    return keys
