"""Scale-out: `consume` into a DuckLake (PostgreSQL catalog, Parquet files) against a DuckDB file.

Prints four tables:

1. **Commit latency**: one process writes the same simulated events in batches to a DuckDB file
   and to a lake; milliseconds per batch transaction (mean, p50, p99, and the last tenth of the
   batches, where the tables are largest).
2. **One consumer**: events/s and CPU-seconds per event (the consumer's own, and the catalog
   server's) for a file and a lake, models off (`--no-embed`) and on.
3. **1, 2 and 3 consumers** in one group into one lake, models off. On this 2-core machine the
   instances share the cores with each other, the broker and PostgreSQL: the figures measure
   contention, not scale-out (each machine of a real deployment brings its own cores).
4. **SIGKILL**: three consumers, one killed mid-stream and started again; events lost and doubled
   (both must be 0).

Each run produces its events first, then starts the consumers and times from the first commit to
the last (start-up and the group join are not counted).

usage: python benchmarks/scaleout.py [--events 20000] [--model-events 3000] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import orjson  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from pg import PgServer  # noqa: E402  (the tests' throwaway PostgreSQL)
from plugin import simulate  # noqa: E402
from stream import pct, start_tansu  # noqa: E402

PARTITIONS = 6
LOGS = Path(tempfile.mkdtemp(prefix="sblt-scaleout-logs-"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their descendants so far."""
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
            for task in Path(f"/proc/{p}/task").glob("*"):
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


def postgres_pids(pg: PgServer) -> list[int]:
    """The catalog server's postmaster (its backends are its children)."""
    return [int((pg.data / "postmaster.pid").read_text().split()[0])]


class Run:
    """A topic of its own with ``events`` simulated records, and a consumer group on it."""

    def __init__(self, bootstrap: str, name: str, events: int, seed: int) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, f"t-{name}", f"g-{name}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic(self.topic, num_partitions=PARTITIONS,
                                               replication_factor=1)]).values():
            f.result(10)
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        self.produced = 0
        for r in simulate.simulate_records(events, seed=seed, anomaly_rate=0.01):
            p.produce(self.topic, key=r["winlog"]["computer_name"].encode(), value=orjson.dumps(r))
            self.produced += 1
            if self.produced % 5000 == 0:
                p.flush(30)
        assert p.flush(60) == 0

    def committed(self) -> int:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            tps = c.committed([TopicPartition(self.topic, i) for i in range(PARTITIONS)],
                              timeout=10)
        finally:
            c.close()
        return sum(max(tp.offset, 0) for tp in tps)

    def start(self, db: str, env: dict[str, str], embed: bool) -> subprocess.Popen:
        """One instance; its warnings and errors go to LOGS/<topic>.log."""
        with (LOGS / f"{self.topic}.log").open("a") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "plugin.cli", "consume", "--bootstrap", self.bootstrap,
                 "--topic", self.topic, "--group", self.group, "--db", db, "-q",
                 *([] if embed else ["--no-embed"])],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)


def env_for(data: Path, batch: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SYSMON_BLT_LAKE_DATA_PATH": str(data),
            "SYSMON_BLT_KAFKA_SESSION_TIMEOUT_MS": "6000", "SYSMON_BLT_STREAM_BATCH_SIZE": str(batch),
            "SYSMON_BLT_LEARNING_EVENTS": "0", "SYSMON_BLT_WORKERS": "0"}


def consume(run: Run, db: str, env: dict[str, str], n: int, embed: bool,
            pg: PgServer | None, kill_at: float | None = None) -> dict:
    """Start ``n`` consumers, wait until every event is committed; rate and CPU per event from
    the first commit on. ``kill_at``: SIGKILL the first instance once that share is committed,
    then start it again."""
    procs = [run.start(db, env, embed) for _ in range(n)]
    try:
        while (first := run.committed()) == 0:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a consumer exited: see {LOGS}/{run.topic}.log")
            time.sleep(0.05)
        t0 = time.monotonic()
        cpu0 = cpu_seconds([p.pid for p in procs])
        pg0 = cpu_seconds(postgres_pids(pg)) if pg else 0.0
        killed_cpu = 0.0
        while (done := run.committed()) < run.produced:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a consumer exited: see {LOGS}/{run.topic}.log")
            if kill_at is not None and done >= kill_at * run.produced:
                killed_cpu = cpu_seconds([procs[0].pid])
                procs[0].kill()
                procs[0].wait()
                procs[0] = run.start(db, env, embed)
                kill_at = None
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        cpu = cpu_seconds([p.pid for p in procs]) + killed_cpu - cpu0
        pg_cpu = (cpu_seconds(postgres_pids(pg)) - pg0) if pg else 0.0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    events = run.produced - first
    return {"events_per_s": events / seconds, "cpu_ms_per_event": 1000 * cpu / events,
            "catalog_cpu_ms_per_event": 1000 * pg_cpu / events, "seconds": seconds}


def commit_latency(db: str, data: Path, events: int, batch: int) -> dict:
    """Milliseconds per `write_batch` of ``batch`` normalized events, written in log order."""
    from plugin.normalize.normalizer import Normalizer
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.flow import event_rows
    from plugin.sources.base import RawRecord
    from plugin.store import open_store, utcnow

    norm = Normalizer(load_schemas(None))
    evs = [norm(RawRecord("bench", i, orjson.dumps(r)))
           for i, r in enumerate(simulate.simulate_records(events, seed=3, anomaly_rate=0.0))]
    store = open_store(db, data_path=str(data), long_running=True)
    times = []
    try:
        for i in range(0, len(evs), batch):
            rows = event_rows(evs[i:i + batch], utcnow())
            t = time.perf_counter()
            store.write_batch(rows, [])
            times.append(1000 * (time.perf_counter() - t))
    finally:
        store.close()
    tail = times[-max(1, len(times) // 10):]
    return {"mean": sum(times) / len(times), "p50": pct(times, 0.5), "p99": pct(times, 0.99),
            "last_tenth": sum(tail) / len(tail)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000, help="events per run, models off")
    ap.add_argument("--model-events", type=int, default=3000, help="events per run, models on")
    ap.add_argument("--batch", type=int, default=256, help="stream_batch_size")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sblt-scaleout-"))
    print(f"(consumer logs: {LOGS})")
    broker, bootstrap = start_tansu()
    pg = PgServer().start()
    seq = iter(range(1000))

    def lake() -> tuple[str, dict[str, str]]:
        n = next(seq)
        return ("ducklake:postgres:" + pg.create_database(f"lake{n}"),
                env_for(tmp / f"data{n}", args.batch))

    def file() -> tuple[str, dict[str, str]]:
        return str(tmp / f"file{next(seq)}.duckdb"), env_for(tmp / "unused", args.batch)

    try:
        print(f"## Commit latency: {args.events} events in batches of {args.batch} "
              "(ms per batch transaction)")
        print("| store | mean | p50 | p99 | last tenth |\n|---|---|---|---|---|")
        for name, (db, env) in (("DuckDB file", file()), ("DuckLake, PostgreSQL catalog", lake())):
            r = commit_latency(db, Path(env["SYSMON_BLT_LAKE_DATA_PATH"]), args.events, args.batch)
            print(f"| {name} | {r['mean']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                  f"{r['last_tenth']:.1f} |", flush=True)

        print("\n## One consumer\n| store | models | events/s | consumer CPU ms/event | "
              "catalog CPU ms/event |\n|---|---|---|---|---|")
        for embed, events in ((False, args.events), (True, args.model_events)):
            for name, target in (("DuckDB file", file), ("DuckLake", lake)):
                db, env = target()
                run = Run(bootstrap, f"one{next(seq)}", events, seed=7)
                r = consume(run, db, env, 1, embed, pg if name == "DuckLake" else None)
                print(f"| {name} | {'on' if embed else 'off'} | {r['events_per_s']:,.0f} | "
                      f"{r['cpu_ms_per_event']:.2f} | {r['catalog_cpu_ms_per_event']:.2f} |",
                      flush=True)

        print("\n## Consumers in one group, one lake, models off (2 cores: contention, not "
              "scale-out)\n| consumers | events/s | consumer CPU ms/event | catalog CPU ms/event |"
              "\n|---|---|---|---|")
        for n in (1, 2, 3):
            db, env = lake()
            run = Run(bootstrap, f"many{next(seq)}", args.events, seed=8)
            r = consume(run, db, env, n, False, pg)
            print(f"| {n} | {r['events_per_s']:,.0f} | {r['cpu_ms_per_event']:.2f} | "
                  f"{r['catalog_cpu_ms_per_event']:.2f} |", flush=True)

        print("\n## SIGKILL of one of three consumers at 40% committed, then a restart")
        db, env = lake()
        run = Run(bootstrap, f"kill{next(seq)}", args.events, seed=9)
        consume(run, db, env, 3, False, pg, kill_at=0.4)
        from plugin.store import open_store

        store = open_store(db, read_only=True, data_path=env["SYSMON_BLT_LAKE_DATA_PATH"])
        rows, distinct = store._run("SELECT count(*), count(DISTINCT event_key) FROM events")[0]
        store.close()
        print("| produced | stored rows | distinct | lost | doubled |\n|---|---|---|---|---|")
        print(f"| {run.produced} | {rows} | {distinct} | {run.produced - distinct} | "
              f"{rows - distinct} |")
    finally:
        pg.stop()
        broker.kill()
        broker.wait()


if __name__ == "__main__":
    main()
