"""The DuckLake store against real catalogs (a throwaway PostgreSQL server, and SQLite): what a
DuckDB file guarantees with its keys, a lake must guarantee with its writer and its commits.

* an import gives the same events, outliers, alerts (and their counts) and incidents as a file;
* a replayed batch stores and counts nothing twice;
* instances starting together on an empty catalog migrate once, and concurrent writers folding
  into the same alerts count every event once (commit conflicts are retried, and creating the
  same new alert twice at the same moment conflicts too);
* `maintain` removes the duplicate a race can let in, and `events_unique` hides it meanwhile;
* a new lake without lake_data_path, or a catalog nobody answers at, is a usage error;
* `prune` and the read commands work on a lake as on a file.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from conftest import EVENT_DATA, evtx_json, throwaway_pg
from pg import free_port
from plugin.errors import UsageError
from plugin.normalize.normalizer import Normalizer
from plugin.pipeline.flow import event_rows
from plugin.sources.base import RawRecord
from plugin.store import VectorRows, open_store, utcnow
from plugin.store.duckdb import load_migrations
from plugin.store.fits import StoredClusters

T0 = datetime(2024, 3, 5, 10, tzinfo=timezone.utc)


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture
def pg_lake(pg_server, tmp_path):
    """A new, empty lake: (--db value, data path) on a database of its own."""
    dsn = pg_server.create_database(f"lake_{uuid.uuid4().hex[:12]}")
    return f"ducklake:postgres:{dsn}", str(tmp_path / "lake-data")


def sim_events(n: int, seed: int = 3) -> list:
    """``n`` simulated events, normalized, one per key."""
    from plugin import simulate
    from plugin.normalize.schema import load_schemas

    norm = Normalizer(load_schemas())
    out = {}
    for i, rec in enumerate(simulate.simulate_records(n, seed=seed)):
        ev = norm(RawRecord("sim", i, orjson.dumps(rec)))
        out[ev.event_key] = ev
    return list(out.values())


def counts(store) -> dict[str, Any]:
    """What an import must agree on, whatever the store: events, keys, outliers, alerts with
    their counts, incidents with their sizes."""
    q = store._run
    return {
        "events": q("SELECT count(*) FROM events")[0][0],
        "keys": q("SELECT count(DISTINCT event_key) FROM events")[0][0],
        "assignments": q("SELECT count(*) FROM assignments")[0][0],
        "outliers": dict(q("SELECT model, count(*) FROM assignments WHERE is_outlier "
                           "GROUP BY 1")),
        "vectors": q("SELECT count(*) FROM text_vectors")[0][0],
        "alerts": dict(q("SELECT alert_id, count FROM alerts")),
        "alert_rows": q("SELECT count(*) FROM alerts")[0][0],
        "incidents": {r[0]: r[1:] for r in q(
            "SELECT incident_id, events, outliers, alerts FROM incidents")},
        "incident_alerts": q("SELECT count(*) FROM incident_alerts")[0][0],
    }


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `sysmon-blt` in-process: (exit code, stdout, stderr)."""
    from plugin.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- an import, as into a file ---------------------------------------------------------------
@pytest.fixture(scope="module")
def imported_lake(pg_server, imported_service_db, tmp_path_factory):
    """The simulated events of `imported_service_db` (a DuckDB file) imported the same way into
    a PostgreSQL-catalog lake: (lake --db value, the file)."""
    from plugin.cli import main

    src = imported_service_db.parent / "events.jsonl"
    assert src.is_file(), "imported_service_db keeps its input beside the database"
    db = "ducklake:postgres:" + pg_server.create_database(f"imported_{uuid.uuid4().hex[:8]}")
    data = tmp_path_factory.mktemp("imported-lake")
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("SYSMON_BLT_LAKE_DATA_PATH", str(data))
        assert main(["import", str(src), "--db", db, "-q"]) == 0
    return db, imported_service_db


def test_an_import_into_a_postgres_lake_matches_a_duckdb_file(imported_lake):
    db, file = imported_lake
    lake = open_store(db, read_only=True)
    ref = open_store(file, read_only=True)
    try:
        got, want = counts(lake), counts(ref)
    finally:
        lake.close()
        ref.close()
    assert want["events"] >= 1400 and want["alerts"] and want["incidents"]  # a real comparison
    assert got["events"] == got["keys"] == want["events"]
    for key in ("assignments", "outliers", "vectors", "alerts", "alert_rows", "incidents",
                "incident_alerts"):
        assert got[key] == want[key], key


def test_the_read_commands_work_on_a_lake(imported_lake, capsys, monkeypatch, tmp_path):
    """`alerts list/show`, `incidents` and `report` read a lake --db as they read a file (no
    lake_data_path needed: an existing lake remembers it)."""
    monkeypatch.delenv("SYSMON_BLT_LAKE_DATA_PATH", raising=False)
    db, file = imported_lake
    answers = {}
    for name, target in (("lake", db), ("file", str(file))):
        rc, out, err = cli(capsys, "alerts", "--db", target, "list", "--top", "0", "--json")
        assert rc == 0, err
        alerts = json.loads(out)
        rc, out, err = cli(capsys, "incidents", "--db", target, "--top", "0", "--json")
        assert rc == 0, err
        incidents = json.loads(out)
        rc, out, err = cli(capsys, "alerts", "--db", target, "show", alerts[0]["alert_id"][:10],
                           "--json")
        assert rc == 0, err
        shown = json.loads(out)
        answers[name] = ([(a["alert_id"], a["count"]) for a in alerts],
                         [(i["incident_id"], i["events"], i["alerts"]) for i in incidents],
                         (shown["alert_id"], shown["event_key"]))
    assert answers["lake"][0] and answers["lake"][1]
    assert sorted(answers["lake"][0]) == sorted(answers["file"][0])
    assert sorted(answers["lake"][1]) == sorted(answers["file"][1])
    assert answers["lake"][2] == answers["file"][2]
    rc, out, err = cli(capsys, "incidents", "--db", db)  # the readable table too
    assert rc == 0 and "score" in out and "Traceback" not in err
    rc, out, err = cli(capsys, "report", "--db", db, "--out", str(tmp_path / "report"),
                       "--json")
    assert rc == 0, err
    assert (tmp_path / "report" / "report.html").is_file()


def test_cursors_and_other_threads_read_the_lake(imported_lake):
    """The store's readers that run on a cursor of their own (the vector cache of an import,
    the service beside a consumer, `for_thread`) read the lake as they read a file: a cursor
    starts outside the lake, and a second import into a lake failed on it."""
    import threading

    db, file = imported_lake
    answers = {}
    for name, target in (("lake", db), ("file", file)):
        store = open_store(target, read_only=True)
        try:
            model, version = store._run("SELECT model, model_version FROM text_vectors "
                                        "ORDER BY 1, 2 LIMIT 1")[0]
            hashes = [r[0] for r in store._run(
                "SELECT text_hash FROM text_vectors WHERE model = ? ORDER BY 1 LIMIT 5",
                [model])]
            vectors = store.read_vectors(model, version, hashes)
            alert_ids = [r[0] for r in store._run("SELECT alert_id FROM alerts")]
            other, seen = store.for_thread(), {}
            reader = threading.Thread(target=lambda: seen.update(
                events=other.event_count(), alerts=len(other.list_alerts(top=None))))
            reader.start()
            reader.join(30)
            answers[name] = {
                "vectors": {h: v.round(5).tolist() for h, v in vectors.items()},
                "texts": store.texts_by_hash(hashes),
                "first": [e.event_key for e in next(store.events_in_log_order(50))],
                "integrity": len(store.integrity_findings()),
                "states": sorted((k, v[0]) for k, v in store.alert_states(alert_ids).items()),
                "appended": sorted(store.text_vectors_after(model, version, -1).hashes),
                "creations": store.creations_after(-1).read,
                "thread": seen,
            }
        finally:
            store.close()
    assert len(answers["file"]["vectors"]) == 5 and answers["file"]["thread"]["events"]
    for key, want in answers["file"].items():
        assert answers["lake"][key] == want, key


# -- replays -----------------------------------------------------------------------------------
def _alert(ev, alert_id: str, score: float = 1.5) -> dict:
    return {"alert_id": alert_id, "event_key": ev.event_key, "model": "blt", "score": score,
            "ts": ev.ts}


def _assignment(ev, outlier: bool) -> dict:
    return {"event_key": ev.event_key, "model": "blt", "version": 0, "cluster": 0,
            "distance": 0.5, "score": 1.5 if outlier else 0.1, "is_outlier": outlier,
            "detail": "{}", "explanation": None}


@pytest.mark.parametrize("catalog", ["postgres", "sqlite"])
def test_a_replayed_batch_stores_and_counts_nothing_twice(catalog, request, tmp_path):
    """A consumer replays what it wrote before a crash: write_batch stores no event twice,
    returns 0, and folds no alert count twice (PostgreSQL and SQLite catalogs alike)."""
    if catalog == "postgres":
        db, data = request.getfixturevalue("pg_lake")
    else:
        db, data = f"ducklake:sqlite:{tmp_path / 'catalog.sqlite'}", str(tmp_path / "data")
    evs = sim_events(80)
    rows = event_rows(evs, utcnow())
    alerts = [_alert(e, f"A{i % 3}") for i, e in enumerate(evs)]
    scores = [_assignment(e, True) for e in evs]
    store = open_store(db, data_path=data)
    try:
        assert store.write_batch(rows, [], assignments=scores, alerts=alerts) == len(evs)
        before = counts(store)
        assert store.write_batch(rows, [], assignments=scores, alerts=alerts) == 0  # replay
        half = len(evs) // 2  # a replay that overlaps new events: only the new ones fold in
        more = sim_events(120)[-10:]
        assert {e.event_key for e in more}.isdisjoint({e.event_key for e in evs})
        mixed = evs[:half] + more
        n = store.write_batch(event_rows(mixed, utcnow()), [],
                              assignments=[_assignment(e, True) for e in mixed],
                              alerts=[_alert(e, "A0") for e in mixed])
        after = counts(store)
    finally:
        store.close()
    assert before["events"] == before["keys"] == len(evs)
    assert before["alerts"] == {f"A{k}": len(range(k, len(evs), 3)) for k in range(3)}
    assert n == len(more)
    assert after["events"] == after["keys"] == len(evs) + len(more)
    assert after["assignments"] == len(evs) + len(more)
    assert after["alert_rows"] == 3
    assert after["alerts"] == {**before["alerts"], "A0": before["alerts"]["A0"] + len(more)}


# -- many instances at once --------------------------------------------------------------------
BATCH = 10


def _instance(db: str, data: str, rows: dict, batches: int, start, go, results) -> None:
    """One instance (a process of its own): open the store when the others do, then write its
    events in ``batches`` batches of BATCH, each started together with the others' batch of
    the same number and folding into the alert of that number: the instances race to create,
    then to fold into, the same alert ids."""
    from plugin.logs import configure

    configure(-1)
    try:
        start.wait(60)
        store = open_store(db, data_path=data)
        new = 0
        for b in range(batches):
            go.wait(60)
            batch = {k: v[b * BATCH:(b + 1) * BATCH] for k, v in rows.items()}
            if not batch["event_key"]:
                continue
            alerts = [{"alert_id": f"A{b}", "event_key": k, "model": "blt", "score": 1.0,
                       "ts": t} for k, t in zip(batch["event_key"], batch["ts"])]
            # and one more alert per batch, which every batch of every instance folds into
            alerts.append({**alerts[-1], "alert_id": "ALL"})
            new += store.write_batch(batch, [], alerts=alerts)
        store.close()
        results.put(("ok", new))
    except BaseException as exc:  # the parent reports it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_instances_starting_together_migrate_once_and_fold_alerts_once(pg_lake):
    db, data = pg_lake
    evs = sim_events(150)
    parts = [evs[i::3] for i in range(3)]
    ctx = mp.get_context("spawn")
    start, go, results = ctx.Barrier(3), ctx.Barrier(3), ctx.Queue()
    batches = max(-(-len(p) // BATCH) for p in parts)
    procs = [ctx.Process(target=_instance, args=(db, data, event_rows(p, utcnow()), batches,
                                                 start, go, results)) for p in parts]
    for p in procs:
        p.start()
    try:
        done = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(status == "ok" for status, _ in done), done
    assert sorted(n for _, n in done) == sorted(len(p) for p in parts)

    store = open_store(db, read_only=True)
    try:
        versions = store._run("SELECT version, count(*) FROM schema_version GROUP BY 1")
        c = counts(store)
        alert_rows = store._run("SELECT alert_id, count(*) FROM alerts GROUP BY 1 "
                                "HAVING count(*) > 1")
    finally:
        store.close()
    assert sorted(versions) == [(v, 1) for v, _ in load_migrations()]
    assert c["events"] == c["keys"] == len(evs)
    assert alert_rows == []  # no alert created twice by instances racing to create it
    want: dict[str, int] = {"ALL": 0}
    for p in parts:
        for b, i in enumerate(range(0, len(p), BATCH)):
            want[f"A{b}"] = want.get(f"A{b}", 0) + len(p[i:i + BATCH])
            want["ALL"] += 1
    assert c["alerts"] == want


# -- maintain ----------------------------------------------------------------------------------
def test_maintain_removes_a_duplicate_a_race_let_in(pg_lake, capsys):
    """Two writers checking at the same moment can both insert an event: `events_unique` reads
    one row per key meanwhile, and `maintain` deletes the later row (the first one stays)."""
    db, data = pg_lake
    evs = sim_events(40)
    store = open_store(db, data_path=data)
    try:
        store.write_batch(event_rows(evs, T0), [], assignments=[_assignment(e, False)
                                                                for e in evs])
        # what a second writer's INSERT, committed beside the first, leaves behind
        store._run("INSERT INTO events SELECT * REPLACE (imported_at + INTERVAL 1 HOUR AS "
                   "imported_at) FROM events WHERE event_key = ?", [evs[0].event_key])
        assert store._run("SELECT count(*) FROM events")[0][0] == len(evs) + 1
        assert store._run("SELECT count(*), count(DISTINCT event_key) FROM events_unique"
                          )[0] == (len(evs), len(evs))
    finally:
        store.close()

    rc, out, err = cli(capsys, "maintain", "--db", db, "--older-than", "0", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["kind"] == "ducklake"
    done = report["done"]
    assert done["duplicate_events"] == 1 and done["duplicate_assignments"] == 0
    assert done["rows_flushed"] > 0  # small commits were inlined in the catalog
    assert done["snapshots_expired"] > 0

    store = open_store(db, data_path=data)
    try:
        assert store._run("SELECT count(*), count(DISTINCT event_key) FROM events")[0] == (
            len(evs), len(evs))
        assert store._run("SELECT imported_at FROM events WHERE event_key = ?",
                          [evs[0].event_key]) == [(T0,)]  # the first row stayed
        assert store._run("SELECT count(*) FROM ducklake_snapshots('lake')")[0][0] == 1
        assert store._run("SELECT count(*) FROM ducklake_list_files('lake', 'events')")[0][0]
        # the lake works on as before: a replay is still a no-op
        assert store.write_batch(event_rows(evs, utcnow()), []) == 0
    finally:
        store.close()
    leftover = {p.name for p in Path(data).rglob("*.parquet")}
    assert leftover, "the data path holds the lake's files"

    rc, out, err = cli(capsys, "maintain", "--db", db)  # readable, nothing left to do
    assert rc == 0 and "duplicate events removed" in out and "Traceback" not in err


def test_maintain_on_a_duckdb_file_checkpoints_and_says_so(tmp_path, capsys):
    db = tmp_path / "case.duckdb"
    store = open_store(db)
    store.write_batch(event_rows(sim_events(20), utcnow()), [])
    store.close()
    rc, out, err = cli(capsys, "maintain", "--db", str(db), "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["kind"] == "duckdb" and report["checkpointed"] is True
    assert report["wal_bytes_after"] == 0 and report["bytes_after"] > 0
    assert "Nothing else to maintain" in report["note"]
    rc, out, err = cli(capsys, "maintain", "--db", str(db))
    assert rc == 0 and out.startswith("checkpointed DuckDB file")
    rc, out, err = cli(capsys, "maintain", "--db", str(db), "--older-than", "-1")
    assert rc == 2 and "--older-than" in err
    rc, out, err = cli(capsys, "maintain", "--db", str(tmp_path / "missing.duckdb"))
    assert rc == 2 and "does not exist" in err


# -- usage errors ------------------------------------------------------------------------------
def test_a_new_lake_without_a_data_path_and_an_unreachable_catalog_are_usage_errors(
        pg_server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SYSMON_BLT_LAKE_DATA_PATH", raising=False)
    db = "ducklake:postgres:" + pg_server.create_database(f"nodata_{uuid.uuid4().hex[:8]}")
    with pytest.raises(UsageError, match="lake_data_path"):
        open_store(db)
    rc, out, err = cli(capsys, "prune", "--older-than", "1", "--db", db)
    assert rc == 2 and "lake_data_path" in err and "Traceback" not in err

    nobody = f"ducklake:postgres:dbname=soc host=127.0.0.1 port={free_port()} user=postgres"
    with pytest.raises(UsageError, match="cannot reach the DuckLake catalog"):
        open_store(nobody, data_path=str(tmp_path / "data"))
    rc, out, err = cli(capsys, "alerts", "--db", nobody, "list")
    assert rc == 2 and "DuckLake" in err and "Traceback" not in err
    rc, out, err = cli(capsys, "maintain", "--db", nobody)
    assert rc == 2 and "DuckLake" in err and "Traceback" not in err

    missing = f"ducklake:sqlite:{tmp_path / 'no' / 'such' / 'folder' / 'c.sqlite'}"
    with pytest.raises(UsageError, match="cannot open DuckLake"):
        open_store(missing, data_path=str(tmp_path / "data"))
    with pytest.raises(UsageError, match="name a catalog"):
        open_store("ducklake:", data_path=str(tmp_path / "data"))


# -- prune -------------------------------------------------------------------------------------
def _timed_events(schemas) -> list:
    """Five process creations a minute apart (minutes 0..4 after T0)."""
    norm = Normalizer(schemas)
    out = []
    for i in range(5):
        data = {**EVENT_DATA, "UtcTime": (T0 + timedelta(minutes=i)).strftime(
            "%Y-%m-%d %H:%M:%S.000"), "CommandLine": f"cmd.exe /c step{i}"}
        out.append(norm(RawRecord("case.evtx", i, orjson.dumps(
            evtx_json(data, EventRecordID=100 + i)))))
    return out


def _prune_scenario(store, events) -> dict[str, Any]:
    """The retention scenario of test_store, on any store: what prune removed and what stayed."""
    store.write_batch(event_rows(events, utcnow()), [])
    hashes = [e.text_hash for e in events]
    store.register_model("blt", "v1", 4, None)
    store.write_batch({}, [], [VectorRows("blt", "v1", hashes, np.ones((5, 4), np.float32))])
    store.write_batch({}, [], assignments=[_assignment(e, False) for e in events],
                      alerts=[_alert(events[1], "a1", 2.0)])
    clusters = StoredClusters(np.ones((1, 4), np.float32), np.array([0.5], np.float32),
                              np.array([1]), [""])
    store.save_fit("blt", "v1", "knn", {}, clusters, [(events[0].text_hash, 1)])
    removed = store.prune(T0 + timedelta(minutes=2))
    return {"removed": removed, "events": sorted(r[0] for r in store._run(
        "SELECT event_key FROM events")), "vectors": store.vector_hashes("blt", "v1"),
            "alerts": store.alert_count(), "fit": store.latest_fit("blt", "v1") is not None}


def test_prune_on_a_lake_removes_what_it_removes_from_a_file(pg_lake, schemas, tmp_path, capsys):
    db, data = pg_lake
    events = _timed_events(schemas)
    lake, file = open_store(db, data_path=data), open_store(tmp_path / "ref.duckdb")
    try:
        got, want = _prune_scenario(lake, events), _prune_scenario(file, events)
    finally:
        lake.close()
        file.close()
    assert want["removed"]["events"] == 2 and want["removed"]["text_vectors"] == 1
    assert got == want

    rc, out, err = cli(capsys, "prune", "--older-than", "36500", "--db", db, "--json")
    assert rc == 0, err
    assert json.loads(out)["removed"]["events"] == 0  # a century: nothing
    rc, out, err = cli(capsys, "prune", "--older-than", "1", "--db", db, "--json")
    assert rc == 0, err
    assert json.loads(out)["removed"]["events"] == 3  # the rest, from 2024
    store = open_store(db, read_only=True)
    try:
        assert store.event_count() == 0 and store.alert_count() == 1
    finally:
        store.close()



@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test's own, to stop and start (the shared one serves others)."""
    yield from throwaway_pg()


def test_a_catalog_outage_is_waited_out_and_nothing_is_lost_or_doubled(own_pg, tmp_path):
    """The catalog stops under a writer: its batch (and a read outside any transaction) waits,
    then lands whole once PostgreSQL is back: every event and dead letter once. A writer told to
    wait less gives up with an error naming the catalog, its password hidden."""
    import threading
    import time

    from plugin.errors import Unavailable
    from plugin.store import DeadLetter
    from plugin.store.lake import LakeStore

    dsn = own_pg.create_database("outage")
    db = f"ducklake:postgres:{dsn}"
    store = open_store(db, data_path=str(tmp_path / "data"))
    evs = sim_events(300)
    store.write_batch(event_rows(evs[:100], utcnow()), [DeadLetter("k:t/0", 1, "bad", "x")])
    own_pg.halt()
    done: dict[str, Any] = {}

    def write() -> None:
        try:
            done["new"] = store.write_batch(event_rows(evs[100:], utcnow()),
                                            [DeadLetter("k:t/0", 2, "bad", "y")])
        except Exception as exc:  # noqa: BLE001 - the test reads it
            done["error"] = exc

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(3)
    assert writer.is_alive() and not done, "the batch must wait for the catalog"
    own_pg.resume()
    writer.join(60)
    assert done == {"new": 200}
    own_pg.halt()
    reader = threading.Thread(target=lambda: done.update(count=store.event_count()))
    reader.start()
    time.sleep(2)
    assert reader.is_alive()
    own_pg.resume()
    reader.join(60)
    assert done["count"] == 300
    q = store._run
    assert q("SELECT count(*), count(DISTINCT event_key) FROM events")[0] == (300, 300)
    assert q("SELECT count(*) FROM dead_letters")[0][0] == 2

    impatient = LakeStore(db + " password=s3cret", data_path=str(tmp_path / "data"),
                          catalog_wait=1.0)
    own_pg.halt()
    with pytest.raises(Unavailable, match="did not answer for 1 s") as err:
        impatient.write_batch(event_rows(evs[:1], utcnow()), [])
    assert "s3cret" not in str(err.value) and "password=***" in str(err.value)
    own_pg.resume()
    store.close()
    impatient.close()
