"""The store on its own: the interface is complete, writes are idempotent and atomic, alerts fold
twins, fits round-trip, and the read-backs answer what their names say."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pytest

from conftest import EVENT_DATA, evtx_json
from plugin.normalize.normalizer import Normalizer
from plugin.pipeline.flow import event_rows
from plugin.sources.base import RawRecord
from plugin.store import DeadLetter, Store, VectorRows, open_store, utcnow
from plugin.store.fits import StoredClusters

T0 = datetime(2024, 3, 5, 10, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "store.duckdb")
    yield s
    s.close()


@pytest.fixture
def events(schemas):
    """Five process creations, a parent (record 1) and four children, out of time order."""
    norm = Normalizer(schemas)
    out = []
    for i, minute in enumerate([4, 0, 3, 1, 2]):
        data = {**EVENT_DATA, "UtcTime": (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S.000"),
                "ProcessGuid": f"{{4A3F1C2D-0000-0000-0000-00000000000{i}}}",
                "ParentProcessGuid": "{4a3f1c2d-0000-0000-0000-000000000001}",
                "CommandLine": f"cmd.exe /c step{i}"}
        out.append(norm(RawRecord("case.evtx", i, orjson.dumps(evtx_json(data, EventRecordID=100 + i)))))
    return out


def test_the_duckdb_store_implements_the_whole_interface(store):
    assert isinstance(store, Store)
    assert not getattr(type(store), "__abstractmethods__", None)


def test_event_writes_are_idempotent(store, events):
    assert store.write_batch(event_rows(events, utcnow()), []) == 5
    assert store.write_batch(event_rows(events, utcnow()), []) == 0
    assert store.event_count() == 5


def test_a_batch_is_one_transaction(store, events):
    bad = {"event_key": events[0].event_key, "model": "m", "version": 1, "cluster": 0,
           "distance": 0.0, "score": None, "is_outlier": False, "detail": "{}", "explanation": None}
    with pytest.raises(Exception):
        store.write_batch(event_rows(events, utcnow()), [DeadLetter("x", 1, "bad", "p")],
                          assignments=[bad])
    assert store.event_count() == 0


def test_events_come_back_in_log_order_and_by_text(store, events):
    """Log order is the order the store received events (batch after batch, each source's own
    order inside one), which is the order import and consume scored them in, not their times:
    a rescore, fit or eval walk must see what the live walk saw."""
    store.write_batch(event_rows(events[2:], T0), [])
    store.write_batch(event_rows(events[:2], T0 + timedelta(seconds=1)), [])
    for size in (1, 2, 3, 10):  # read an arrival range at a time, whatever the sizes
        got = [e for batch in store.events_in_log_order(batch_size=size) for e in batch]
        assert [e.position for e in got] == [2, 3, 4, 0, 1]
    assert all(e.raw == "" and e.fields for e in got)  # fields read back, the raw record not
    one = events[2].text_hash
    assert [e.event_key for b in store.events_in_log_order(text_hashes=[one]) for e in b] == \
        [events[2].event_key]


def test_events_read_back_keep_their_utc_time_whatever_the_session_time_zone(store, events):
    """The reader selects an event's time as its UTC wall time and makes it aware in Python
    (DuckDB's own TIMESTAMPTZ conversion goes through pytz, a third of the read): a cast that
    followed the session's time zone would shift every time read back, and with it the
    incident windows a rescore forms."""
    store.write_batch(event_rows(events, T0), [])
    store.con.execute("SET GLOBAL TimeZone = 'America/New_York'")
    try:
        got = [e for b in store.events_in_log_order() for e in b]
    finally:
        store.con.execute("RESET GLOBAL TimeZone")
    assert [e.ts for e in got] == [e.ts for e in events]
    assert all(e.ts.utcoffset() == timedelta(0) for e in got)


def test_arrival_ranges_hold_at_least_a_batch_each():
    from plugin.store.events import arrival_ranges

    arrivals = [(1, 3), (2, 1), (3, 5), (4, 1)]
    assert list(arrival_ranges(arrivals, 4)) == [(1, 2), (3, 3), (4, 4)]
    assert list(arrival_ranges(arrivals, 100)) == [(1, 4)]
    assert list(arrival_ranges([], 4)) == []


def test_alerts_fold_twins(store, events):
    """Twins fold into one alert with the highest score, within a batch as across batches (a
    batch once kept its first twin's score)."""
    store.write_batch(event_rows(events, utcnow()), [])
    a = {"alert_id": "a1", "event_key": events[0].event_key, "model": "blt", "score": 1.5,
         "ts": T0 + timedelta(minutes=5)}
    store.write_batch({}, [], alerts=[a, {**a, "score": 2.5, "ts": T0}])
    store.write_batch({}, [], alerts=[{**a, "score": 1.1, "ts": T0 + timedelta(minutes=9)}])
    (row,) = store._run("SELECT count, score, first_seen, last_seen, status FROM alerts")
    assert row[0] == 3 and row[1] == 2.5 and row[4] == "open"
    assert row[2] == T0 and row[3] == T0 + timedelta(minutes=9)


def test_only_alerts_nobody_saw_or_marked_are_dropped_when_unconfirmed(store, events):
    """A cold start's settled walk deletes its first walk's alerts that it did not confirm
    (count 0 after the rescore): open and never marked. One an analyst marked, even back to
    open, keeps its history; another model's and a confirmed one stay."""
    store.write_batch(event_rows(events, utcnow()), [])
    base = {"event_key": events[0].event_key, "model": "blt", "score": 1.5, "ts": T0}
    store.write_batch({}, [], alerts=[{**base, "alert_id": i} for i in ("new", "marked", "fp", "kept")]
                      + [{**base, "alert_id": "shadow", "model": "linformer"}])
    store.mark_alert("marked", "open", "looked at it", "ana")
    store.mark_alert("fp", "false_positive", None, "ana")
    store.reset_alert_counts(["blt", "linformer"])
    # the settled walk confirms one, at a lower score than the first walk gave it
    store.write_batch({}, [], alerts=[{**base, "alert_id": "kept", "score": 1.1}])
    assert store.drop_unconfirmed_alerts(["blt"]) == 1
    assert sorted(r[0] for r in store._run("SELECT alert_id FROM alerts")) == \
        ["fp", "kept", "marked", "shadow"]
    # its score is the current walk's, not the higher one it held before the reset
    assert store._run("SELECT count, score FROM alerts WHERE alert_id = 'kept'") == [(1, 1.1)]
    assert store.drop_unconfirmed_alerts([]) == 0


def test_assignments_replace_older_scores(store, events):
    store.write_batch(event_rows(events, utcnow()), [])
    row = {"event_key": events[0].event_key, "model": "blt", "version": 1, "cluster": 0,
           "distance": 0.1, "score": 0.5, "is_outlier": False, "detail": '{"v": 1}', "explanation": None}
    store.write_batch({}, [], assignments=[row])
    store.write_batch({}, [], assignments=[{**row, "detail": '{"v": 2}'}])
    assert store.assignment_details("blt", [events[0].event_key]) == [{"v": 2}]
    assert store.assignment_details("blt", []) == []


def test_process_creation_by_guid_in_any_spelling(store, events):
    store.write_batch(event_rows(events, utcnow()), [])
    p = store.process_creation("4a3f1c2d-0000-0000-0000-000000000003")
    assert p["event_key"] == events[3].event_key
    assert p["command_line"] == "cmd.exe /c step3"
    assert store.process_creation("4a3f1c2d-0000-0000-0000-0000000000ff") is None


def test_vectors_texts_and_neighbours(store, events):
    store.write_batch(event_rows(events, utcnow()), [])
    hashes = [e.text_hash for e in events]
    vecs = np.eye(5, 4, dtype=np.float32) + 0.01
    store.register_model("blt", "v1", 4, None)
    store.write_batch({}, [], [VectorRows("blt", "v1", hashes, vecs)])
    assert store.vector_hashes("blt", "v1") == set(hashes)
    assert store.events_lacking_vectors("blt", "v1") == 0
    assert store.events_lacking_vectors("blt", "v2") == 5
    np.testing.assert_array_equal(store.read_vectors("blt", "v1", hashes[:2])[hashes[1]], vecs[1])
    assert store.texts_by_hash([hashes[4]]) == {hashes[4]: events[4].normalized}
    near = store.nearest_events("blt", "v1", vecs[2], k=2)
    assert near[0]["event_key"] == events[2].event_key and near[0]["similarity"] == pytest.approx(1.0)
    assert len(near) == 2


def test_fits_round_trip_and_the_shipped_fit_is_recorded_once(store, events):
    store.write_batch(event_rows(events, utcnow()), [])
    clusters = StoredClusters(np.ones((2, 4), np.float32), np.array([0.5, 0.7], np.float32),
                              np.array([3, 2]), ["medoid a", "medoid b"])
    assert store.latest_fit("blt", "v1") is None
    store.record_shipped_fit("blt", "v1", clusters, "centroid", {"k": 2})
    store.record_shipped_fit("blt", "v1", clusters, "centroid", {"k": 2})
    assert store.latest_fit("blt", "v1") is None  # version 0 is the shipped one, not a fit
    v = store.save_fit("blt", "v1", "knn", {"quantile": 0.99}, clusters, [("h1", 3), ("h2", 2)])
    assert v == 1 and store.latest_fit("blt", "v1") == (1, {"quantile": 0.99})
    got = store.fit_clusters("blt", 1)
    np.testing.assert_array_equal(got.thresholds, clusters.thresholds)
    assert got.medoids == ["medoid a", "medoid b"]
    assert sorted(store.fit_baseline("blt", 1)) == [("h1", 3), ("h2", 2)]
    assert store.save_fit("blt", "v1", "knn", {}, clusters, []) == 2


def test_baseline_candidates_hold_back_flagged_texts_unless_marked_false_positive(store, events):
    store.write_batch(event_rows(events, utcnow()), [])
    store.register_model("blt", "v1", 4, None)
    store.write_batch({}, [], [VectorRows("blt", "v1", [e.text_hash for e in events],
                                          np.ones((5, 4), np.float32))])
    flagged = {"event_key": events[0].event_key, "model": "blt", "version": 1, "cluster": 0,
               "distance": 0.9, "score": 3.0, "is_outlier": True, "detail": "{}", "explanation": None}
    store.write_batch({}, [], assignments=[flagged],
                      alerts=[{"alert_id": "a1", "event_key": events[0].event_key, "model": "blt",
                               "score": 3.0, "ts": T0}])
    cands = {c.text_hash: c for c in store.baseline_candidates("blt", "v1", "blt")}
    assert len(cands) == 5 and cands[events[0].text_hash].was_flagged
    assert sum(c.was_flagged for c in cands.values()) == 1
    store._run("UPDATE alerts SET status = 'false_positive'")
    assert not any(c.was_flagged for c in store.baseline_candidates("blt", "v1", "blt"))


def test_imports_custody(store):
    assert store.completed_import("abc") is None
    row = {"path": "a.evtx", "sha256": "abc", "bytes": 10, "records": 4, "sysmon_events": 3,
           "new_events": 3, "duplicates": 0, "skipped_non_sysmon": 1, "dead_letters": 0,
           "started": utcnow(), "finished": utcnow(), "status": "complete", "tool_version": "t",
           "model_version": None, "config_hash": ""}
    store.record_import({**row, "status": "skipped_same_sha256", "sha256": "zzz"})
    store.record_import(row)
    assert store.completed_import("abc") == {"path": "a.evtx", "sysmon_events": 3, "records": 4}
    assert store.completed_import("zzz") is None  # only complete imports count


def test_evaluations_are_kept_for_the_report(store, events):
    store.write_batch(event_rows(events, utcnow()), [])
    keys = [e.event_key for e in events]
    store.keep_evaluation(keys, [True, False, False, False, False], "eval --attack x",
                          {"test": ["x"]}, {"blt-context": {"roc_auc": 0.9}})
    assert store.label_count() == 5
    (ev,) = store.evaluations()
    assert ev["results"] == {"blt-context": {"roc_auc": 0.9}} and ev["spec"] == {"test": ["x"]}


def test_process_creation_matches_the_guid_spelling_of_lineage(store, schemas):
    """The SQL lookup spells GUIDs as `plugin.detect.lineage.guid` does (braces, case and
    whitespace inside the braces ignored)."""
    from plugin.detect.lineage import guid

    stored = " { 4A3F1C2D-0000-0000-0000-0000000000AA } "
    data = {**EVENT_DATA, "ProcessGuid": stored}
    ev = Normalizer(schemas)(RawRecord("x", 0, orjson.dumps(evtx_json(data))))
    store.write_batch(event_rows([ev], utcnow()), [])
    assert store.process_creation(guid(stored))["event_key"] == ev.event_key


def test_a_replayed_event_never_raises_an_alert_count(store, events):
    """After a crash the stream replays events already stored: their alerts must not fold in
    twice (only newly stored events count)."""
    a = {"alert_id": "a1", "event_key": events[0].event_key, "model": "blt", "score": 1.5, "ts": T0}
    store.write_batch(event_rows(events[:1], utcnow()), [], alerts=[a])
    store.write_batch(event_rows(events[:1], utcnow()), [], alerts=[a])  # the replay
    b = {**a, "event_key": events[1].event_key}  # a twin, newly stored: folds in
    store.write_batch(event_rows(events[:2], utcnow()), [], alerts=[a, b])
    assert store.list_alerts()[0]["count"] == 2


def test_a_record_read_again_is_one_dead_letter(store):
    """An import killed and run again, or a Kafka replay, reads the same bad records twice:
    each stays one dead letter (two distinct errors at one position stay two)."""
    bad = [DeadLetter("case.evtx", 7, "damaged EVTX chunk 2: bad magic", "x"),
           DeadLetter("case.evtx", 7, "unreadable EVTX record: bad size", "y"),
           DeadLetter("kafka:t/0", 41, "invalid JSON: unexpected end", "{")]
    store.write_batch({}, bad)
    store.write_batch({}, bad)  # the rerun
    store.write_batch({}, [DeadLetter("case.evtx", 8, "damaged EVTX chunk 2: bad magic", "x")])
    rows = store.con.execute("SELECT source, position, reason FROM dead_letters "
                             "ORDER BY ALL").fetchall()
    assert rows == sorted([(d.source, d.position, d.reason) for d in bad]
                          + [("case.evtx", 8, "damaged EVTX chunk 2: bad magic")])


def test_prune_drops_old_events_and_what_only_they_used(store, events):
    """Retention: old events, their scores and the vectors nobody else needs leave; a vector a
    fit's baseline uses, fits and alerts stay."""
    store.write_batch(event_rows(events, utcnow()), [])
    hashes = [e.text_hash for e in events]
    store.register_model("blt", "v1", 4, None)
    store.write_batch({}, [], [VectorRows("blt", "v1", hashes, np.ones((5, 4), np.float32))])
    row = {"model": "blt", "version": 1, "cluster": 0, "distance": 0.1, "score": 0.5,
           "is_outlier": False, "detail": "{}", "explanation": None}
    store.write_batch({}, [], assignments=[{**row, "event_key": e.event_key} for e in events],
                      alerts=[{"alert_id": "a1", "event_key": events[1].event_key, "model": "blt",
                               "score": 2.0, "ts": T0}])
    clusters = StoredClusters(np.ones((1, 4), np.float32), np.array([0.5], np.float32),
                              np.array([1]), [""])
    store.save_fit("blt", "v1", "knn", {}, clusters, [(events[1].text_hash, 1)])
    old = [e for e in events if e.ts < T0 + timedelta(minutes=2)]  # minutes 0 and 1
    removed = store.prune(T0 + timedelta(minutes=2))
    assert removed["events"] == len(old) == 2 and removed["assignments"] == 2
    assert removed["text_vectors"] == 1  # the other old text is in the fit's baseline
    assert store.event_count() == 3
    assert {e.event_key for e in old} == {events[1].event_key, events[3].event_key}
    assert store.vector_hashes("blt", "v1") == set(hashes) - {events[3].text_hash}
    assert store.alert_count() == 1 and store.latest_fit("blt", "v1") is not None


def test_connection_settings_keep_stdout_clean_and_a_consumer_small(tmp_path):
    """DuckDB's progress bar wrote to stdout (it corrupted `import --json`); a long-running
    consumer checkpoints often, or unwritten table data grows in memory."""
    bulk = open_store(tmp_path / "bulk.duckdb")
    assert bulk._run("SELECT current_setting('enable_progress_bar')")[0][0] is False
    bulk.close()
    live = open_store(tmp_path / "live.duckdb", long_running=True)
    threshold = live._run("SELECT current_setting('checkpoint_threshold')")[0][0]
    live.close()
    assert threshold.replace(" ", "").upper().startswith(("16.0MB", "16MB", "15.2MIB"))


def _copy_of(ev, **changes):
    """The same event as another read of its record would give (a replay)."""
    from dataclasses import replace
    return replace(ev, **changes)


def test_the_writer_enforces_event_keys_without_an_index(store, events):
    """`events` has no key index (migration 9): the writer's time-range check is what keeps a
    replay out, also for a copy whose time is finer than the key reads it, for events without a
    time, and for a key twice in one batch; scores of a replayed event replace the row."""
    assert not store._run("SELECT 1 FROM duckdb_constraints() WHERE table_name IN "
                          "('events', 'assignments') AND constraint_type = 'PRIMARY KEY'")
    store.write_batch(event_rows(events[:3], utcnow()), [])
    finer = _copy_of(events[0], ts=events[0].ts + timedelta(microseconds=400))
    untimed = [_copy_of(events[3], ts=None, event_key="untimed-1")]
    assert store.write_batch(event_rows([finer, events[3], events[3], events[4]] + untimed,
                                        utcnow()), []) == 3
    assert store.write_batch(event_rows(untimed + events, utcnow()), []) == 0
    assert store.event_count() == 6
    assert store._run("SELECT count(DISTINCT event_key) FROM events")[0][0] == 6
    row = {"event_key": events[1].event_key, "model": "blt", "version": 1, "cluster": 0,
           "distance": 0.1, "score": 0.5, "is_outlier": False, "detail": '{"v": 1}',
           "explanation": None}
    store.write_batch(event_rows([events[1]], utcnow()), [], assignments=[row])
    store.write_batch(event_rows([events[1]], utcnow()), [],
                      assignments=[{**row, "detail": '{"v": 2}'}])
    assert store._run("SELECT count(*) FROM assignments")[0][0] == 1
    assert store.assignment_details("blt", [events[1].event_key]) == [{"v": 2}]


def test_a_small_pool_takes_more_events_than_a_key_index_would_fit(tmp_path):
    """With primary keys on `events` and `assignments`, DuckDB held their indexes whole in the
    pool: a 256 MB pool failed after ~700,000 events scored by two models (measured), and a 32 MB
    one fails this test. Without them the pool is a cache, not a bound."""
    import hashlib

    s = open_store(tmp_path / "small.duckdb", memory_limit="32MB")
    n, per = 150_000, 5_000
    for b in range(n // per):
        keys = [hashlib.sha256(f"{b}-{i}".encode()).hexdigest()[:32] for i in range(per)]
        ts = [T0 + timedelta(seconds=b * per + i) for i in range(per)]
        cols = {"event_key": keys, "source": ["kafka:t/0"] * per, "position": list(range(per)),
                "event_id": [1] * per, "computer": ["h"] * per, "user_name": ["u"] * per,
                "ts": ts, "record_id": list(range(per)), "channel": ["c"] * per,
                "shape": ["flat"] * per, "normalized": ["image=c:\\x.exe"] * per,
                "text_hash": ["t"] * per, "fields": ["{}"] * per, "raw": ["{}"] * per,
                "imported_at": [T0] * per}
        scores = [{"event_key": k, "model": m, "version": 0, "cluster": 1, "distance": 0.1,
                   "score": 0.2, "is_outlier": False, "detail": "{}", "explanation": None}
                  for k in keys for m in ("blt", "linformer")]
        assert s.write_batch(cols, [], assignments=scores) == per
    assert s.event_count() == n
    s.close()


def test_a_small_pool_takes_more_texts_than_a_vector_key_index_would_fit(tmp_path):
    """`text_vectors` kept a key index of one row per model and distinct text whole in the pool:
    a 64 MB pool ran out at 175,000 texts of two models (measured), a 32 MB one fails this test.
    The writer keeps one vector per (model, version, text) without it: a replayed batch and a
    text twice in one batch store nothing twice."""
    import hashlib

    s = open_store(tmp_path / "vectors.duckdb", memory_limit="32MB")
    assert not s._run("SELECT 1 FROM duckdb_constraints() WHERE table_name = 'text_vectors' "
                      "AND constraint_type = 'PRIMARY KEY'")
    for m in ("blt", "linformer"):
        s.register_model(m, "v1", 8, None)
    rng = np.random.default_rng(0)
    n, per = 120_000, 5_000
    batch = []
    for b in range(n // per):
        hashes = [hashlib.sha256(f"{b}-{i}".encode()).hexdigest() for i in range(per)]
        vecs = rng.standard_normal((per, 8)).astype(np.float32)
        batch = [VectorRows(m, "v1", hashes, vecs) for m in ("blt", "linformer")]
        s.write_batch({}, [], batch)
    assert s._run("SELECT count(*) FROM text_vectors")[0][0] == 2 * n
    s.write_batch({}, [], batch)  # a replay of the last batch
    twice = VectorRows("blt", "v1", ["new", "new", batch[0].text_hashes[0]],
                       np.ones((3, 8), np.float32))
    s.write_batch({}, [], [twice])
    assert s._run("SELECT count(*) FROM text_vectors")[0][0] == 2 * n + 1
    assert s._run("SELECT count(*) FROM text_vectors WHERE text_hash IN (SELECT unnest(?))",
                  [batch[0].text_hashes + ["new"]])[0][0] == 2 * per + 1
    np.testing.assert_array_equal(
        s.read_vectors("blt", "v1", [batch[0].text_hashes[0]])[batch[0].text_hashes[0]],
        batch[0].vectors[0])  # the first vector stays
    s.close()


def test_a_file_with_keyed_tables_is_migrated_to_keyless_ones(tmp_path, events):
    """A database written before migration 9 (keys indexed) keeps every row and column, and a
    replay into it after the upgrade stores nothing."""
    import duckdb

    from plugin.store.duckdb import DuckDBStore, load_migrations

    db = tmp_path / "v8.duckdb"
    old = DuckDBStore.__new__(DuckDBStore)
    old.path, old.con = str(db), duckdb.connect(str(db))
    old._migrate([m for m in load_migrations() if m[0] <= 8])
    old.write_batch(event_rows(events, utcnow()), [], assignments=[
        {"event_key": e.event_key, "model": "blt", "version": 0, "cluster": 1, "distance": 0.1,
         "score": 0.2, "is_outlier": False, "detail": "{}", "explanation": None}
        for e in events])
    old.register_model("blt", "v1", 4, None)
    vectors = VectorRows("blt", "v1", [e.text_hash for e in events[:2]],
                         np.arange(8, dtype=np.float32).reshape(2, 4))
    old.write_batch({}, [], [vectors])
    assert old.schema_version() == 8
    before = old._run("SELECT * FROM events ORDER BY event_key")
    vector_columns = "SELECT model, model_version, text_hash, vector, created FROM text_vectors"
    stored_vectors = old._run(vector_columns + " ORDER BY text_hash")
    old.close()
    s = open_store(db)
    assert s.schema_version() == load_migrations()[-1][0]
    assert s._run("SELECT * FROM events ORDER BY event_key") == before
    assert s._run(vector_columns + " ORDER BY text_hash") == stored_vectors
    assert not s._run("SELECT 1 FROM duckdb_constraints() WHERE table_name IN ('events', "
                      "'assignments', 'text_vectors') AND constraint_type = 'PRIMARY KEY'")
    assert s._run("SELECT count(*) FROM assignments")[0][0] == 5
    assert s.write_batch(event_rows(events, utcnow()), [], [vectors]) == 0
    assert s._run("SELECT count(*) FROM text_vectors")[0][0] == len(stored_vectors)
    assert s._run("SELECT count(*) FROM event_vectors")[0][0] == 2  # the view still binds
    s.close()


def test_a_large_keyed_file_migrates_inside_a_small_pool(tmp_path):
    """Migration 9 copies `events` inside the pool the opening command has; sorting the copy by
    time ran a 595,000-event file out of the 512 MB default (measured), and this file out of 32 MB."""
    import hashlib

    import duckdb

    from plugin.store.duckdb import DuckDBStore, load_migrations

    db = tmp_path / "v8.duckdb"
    old = DuckDBStore.__new__(DuckDBStore)
    old.path, old.con = str(db), duckdb.connect(str(db))
    old._run("SET memory_limit = '1GB'")
    old._migrate([m for m in load_migrations() if m[0] <= 8])
    per, raw = 10_000, "x" * 1500
    for b in range(6):
        keys = [hashlib.sha256(f"{b}-{i}".encode()).hexdigest()[:32] for i in range(per)]
        old.write_batch({
            "event_key": keys, "source": ["a.evtx"] * per, "position": list(range(per)),
            "event_id": [1] * per, "computer": ["h"] * per, "user_name": ["u"] * per,
            "ts": [T0 - timedelta(seconds=b * per + i) for i in range(per)],
            "record_id": list(range(per)), "channel": ["c"] * per, "shape": ["evtx"] * per,
            "normalized": [f"image=c:\\x{i}.exe" for i in range(per)], "text_hash": keys,
            "fields": ["{}"] * per, "raw": [raw + k for k in keys], "imported_at": [T0] * per}, [])
    old.close()
    s = open_store(db, memory_limit="32MB")
    assert s.schema_version() == load_migrations()[-1][0]
    assert s.event_count() == 60_000
    s.close()


def test_a_small_pool_rewrites_every_assignment_as_a_rescore_does(tmp_path):
    """A rescore writes every event's assignment again, batch by batch. As a MERGE ... UPDATE,
    DuckDB held the old versions in memory it cannot spill until a checkpoint: the settle pass
    over the OTRF folder (1.19M rows) failed at the default 512 MB pool, and a 32 MB pool fails
    this test. Rows replaced keep an incident link the new row lacks, take a new one it has,
    and stay one per event and model."""
    import hashlib

    s = open_store(tmp_path / "rescore.duckdb", memory_limit="32MB")
    n, per = 60_000, 5_000
    detail = orjson.dumps({"scorer": "surprisal", "explanation": "x" * 400}).decode()

    def scores(keys: list[str], b: int, score: float) -> list[dict]:
        return [{"event_key": k, "model": m, "version": 0, "cluster": 1, "distance": 0.1,
                 "score": score, "is_outlier": False, "detail": detail, "explanation": None,
                 "incident_id": f"inc-{b}" if score == 0.2 and i == 0 and m == "blt" else None}
                for i, k in enumerate(keys) for m in ("blt", "linformer")]

    batches = []
    for b in range(n // per):
        keys = [hashlib.sha256(f"{b}-{i}".encode()).hexdigest()[:32] for i in range(per)]
        cols = {"event_key": keys, "source": ["x.evtx"] * per, "position": list(range(per)),
                "event_id": [1] * per, "computer": ["h"] * per, "user_name": ["u"] * per,
                "ts": [T0 + timedelta(seconds=b * per + i) for i in range(per)],
                "record_id": list(range(per)), "channel": ["c"] * per, "shape": ["flat"] * per,
                "normalized": ["image=c:\\x.exe"] * per, "text_hash": ["t"] * per,
                "fields": ["{}"] * per, "raw": ["{}"] * per, "imported_at": [T0] * per}
        assert s.write_batch(cols, [], assignments=scores(keys, b, 0.2)) == per
        batches.append(keys)
    for b, keys in enumerate(batches):  # the rescore: no events, every row again
        again = scores(keys, b, 0.7)
        again[2]["incident_id"] = "inc-new"  # the second event's blt row joins an incident now
        assert s.write_batch({}, [], assignments=again) == 0
    assert s._run("SELECT count(*), count(DISTINCT (event_key, model)), min(score) "
                  "FROM assignments") == [(2 * n, 2 * n, 0.7)]
    links = s._run("SELECT incident_id, count(*) FROM assignments WHERE incident_id IS NOT NULL "
                   "GROUP BY ALL ORDER BY ALL")
    assert links == sorted([(f"inc-{b}", 1) for b in range(n // per)] + [("inc-new", n // per)])
    s.close()
