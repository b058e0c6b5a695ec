"""The flow: records in, durable batches out, with what each batch covers of its sources.

These are the properties the Kafka consumer and the importer rely on: batches by size and by
deadline, positions handed out only once everything before them is written, nothing dropped
(bad records become dead letters in the same batch), twins stored once, and a failed write
stopping the hand-out of positions.
"""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from conftest import EVENT_DATA, evtx_json
from plugin.normalize.normalizer import Normalizer
from plugin.pipeline.flow import Flow
from plugin.sources.base import RawRecord, SourceError
from plugin.store import open_store

SRC = "kafka:sysmon/0"


def record(position: int, record_id: int | None = None, utc: str = "2024-03-05 10:11:12.345",
           source: str = SRC) -> RawRecord:
    """One Sysmon process creation; distinct record ids make distinct events."""
    doc = evtx_json({**EVENT_DATA, "UtcTime": utc},
                    EventRecordID=record_id if record_id is not None else 1000 + position)
    return RawRecord(source, position, orjson.dumps(doc))


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "flow.duckdb")
    yield s
    s.close()


@pytest.fixture
def normalizer(schemas):
    return Normalizer(schemas)


def test_batches_by_size_and_positions_cover_every_record_fed(store, normalizer):
    flow = Flow(store, normalizer, batch_size=3)
    for i in range(7):
        flow.feed(record(i))
    flow.feed(RawRecord(SRC, 7, b"{not json"))  # a dead letter, in the last batch
    logon = evtx_json(EventID=4624, Channel="Security",
                      Provider={"#attributes": {"Name": "Microsoft-Windows-Security-Auditing"}})
    flow.feed(RawRecord(SRC, 8, orjson.dumps(logon)))  # not Sysmon: counted, skipped
    flow.flush()
    counts = flow.drain()
    done = flow.completed()
    flow.close()
    assert [d.seq for d in done] == [1, 2, 3]
    assert [d.events for d in done] == [3, 3, 1]
    assert [d.positions for d in done] == [{SRC: 2}, {SRC: 5}, {SRC: 8}]
    assert done[-1].dead_letters == 1
    assert counts.records == 9 and counts.sysmon_events == 7 and counts.new_events == 7
    assert counts.dead_letters == 1 and counts.skipped_non_sysmon == 1
    assert store.event_count() == 7
    assert flow.completed() == []  # handed out once


def test_twins_are_stored_once_within_and_across_batches(store, normalizer):
    flow = Flow(store, normalizer, batch_size=10)
    flow.feed(record(0, record_id=5))
    flow.feed(record(1, record_id=5))  # the same event again, same batch
    flow.flush()
    flow.feed(record(2, record_id=5))  # and in a later batch
    flow.flush()
    counts = flow.drain()
    flow.close()
    assert counts.sysmon_events == 3 and counts.new_events == 1 and counts.duplicates == 2
    assert store.event_count() == 1


def test_time_window_filters_events_but_not_their_positions(store, normalizer):
    from datetime import datetime, timezone

    flow = Flow(store, normalizer, since=datetime(2024, 3, 5, 12, tzinfo=timezone.utc))
    flow.feed(record(0, utc="2024-03-05 10:00:00.000"))
    flow.feed(record(1, utc="2024-03-05 13:00:00.000"))
    flow.flush()
    counts = flow.drain()
    (done,) = flow.completed()
    flow.close()
    assert counts.filtered_by_time == 1 and counts.new_events == 1
    assert done.positions == {SRC: 1}


def test_a_batch_is_due_after_its_deadline(store, normalizer):
    flow = Flow(store, normalizer, batch_size=1000, max_wait_s=0.05)
    assert not flow.due()
    flow.feed(record(0))
    assert not flow.due()
    time.sleep(0.08)
    assert flow.due()
    flow.flush()
    flow.drain()
    assert not flow.due()
    flow.close()


def test_source_errors_become_dead_letters_and_advance_positions(store, normalizer):
    flow = Flow(store, normalizer)
    flow.feed(SourceError("case.evtx", 4, "damaged chunk", b"\x00\x01"))
    flow.flush()
    counts = flow.drain()
    (done,) = flow.completed()
    flow.close()
    assert counts.dead_letters == 1 and counts.records == 0
    assert done.positions == {"case.evtx": 4} and done.dead_letters == 1


def test_on_durable_is_called_in_order(store, normalizer):
    seen = []
    flow = Flow(store, normalizer, batch_size=2, on_durable=seen.append)
    for i in range(5):
        flow.feed(record(i))
    flow.flush()
    flow.drain()
    flow.close()
    assert [d.seq for d in seen] == [1, 2, 3]
    assert seen[-1].positions == {SRC: 4}


def test_events_already_stored_are_rescored_not_rewritten(store, normalizer):
    """`rescore`'s use: no normalizer, store_events=False; only what the stages add is written."""
    flow = Flow(store, normalizer)
    flow.feed(record(0))
    flow.flush()
    flow.drain()
    flow.close()
    (stored,) = next(store.events_in_log_order())

    def stage(batch):
        for e in batch.events:
            batch.assignments.append({"event_key": e.event_key, "model": "m", "version": 1,
                                      "cluster": 0, "distance": 0.5, "score": 2.0,
                                      "is_outlier": True, "detail": "{}", "explanation": None})

    again = Flow(store, None, [stage], store_events=False)
    again.add(stored)
    again.flush()
    counts = again.drain()
    again.close()
    assert counts.new_events == 0 and counts.duplicates == 0
    assert store.assignment_details("m", [stored.event_key]) == [{}]
    assert store.event_count() == 1


def test_a_failed_write_stops_positions_and_is_raised(store, normalizer):
    def bad_stage(batch):  # an assignment the table refuses (score is NOT NULL)
        for e in batch.events:
            batch.assignments.append({"event_key": e.event_key, "model": "m", "version": 1,
                                      "cluster": 0, "distance": 0.0, "score": None,
                                      "is_outlier": False, "detail": "{}", "explanation": None})

    flow = Flow(store, normalizer, [bad_stage])
    flow.feed(record(0))
    flow.flush()
    with pytest.raises(Exception):
        flow.drain()
    with pytest.raises(Exception):
        flow.completed()
    flow.close()
    assert store.event_count() == 0  # the batch is one transaction: nothing of it was kept


def test_completed_batches_are_counted_and_not_kept(store, normalizer):
    """A long-running consumer calls `completed` and rarely `drain`: what completed hands out is
    counted then, and nothing about it stays behind in the flow."""
    flow = Flow(store, normalizer, batch_size=2)
    for i in range(6):
        flow.feed(record(i))
    flow.flush()
    flow._writer.drain()
    assert len(flow.completed()) == 3
    assert not flow._inflight and not flow._ready
    counts = flow.drain()
    flow.close()
    assert counts.new_events == 6 and counts.duplicates == 0


def test_an_outlier_text_is_explained_once_across_batches(store, normalizer):
    """The per-text explanation (an entropy-model pass) is kept across batches: a stream repeats
    its outlier texts, and recomputing them made scoring grow with the stream."""
    import numpy as np

    from plugin.detect.kmeans import ClusterModel
    from plugin.detect.outliers import CentroidScorer
    from plugin.pipeline.score import ScoreStage

    clusters = ClusterModel(centroids=np.eye(1, 4, dtype=np.float32),
                            thresholds=np.full(1, 1e-6, np.float32), sizes=np.ones(1, np.int64),
                            quantile=0.99, medoid_index=np.full(1, -1, np.int64))
    calls = []
    stage = ScoreStage("m", 1, CentroidScorer(clusters),
                       explain=lambda text, ts: calls.append(text) or {"why": "far"})

    def vectors(batch):  # every text far from the one centroid: all outliers
        batch.text_vectors["m"] = {e.text_hash: np.array([0, 1, 0, 0], np.float32) for e in batch.events}

    flow = Flow(store, normalizer, [vectors, stage], batch_size=1)
    for i in range(3):  # three twins (same text), three batches
        flow.feed(record(i))
    flow.flush()
    flow.drain()
    flow.close()
    assert stage.outliers == 3 and len(calls) == 1


def test_per_text_bounds_smaller_than_a_batch_change_no_score(tmp_path, normalizer,
                                                               micro_model_dir):
    """A consumer bounds the vectors and scores it keeps (`stream_cache_texts`); a batch with more
    new texts than that, and texts seen again after they left, are still embedded once, read
    back and scored exactly as with room for everything."""
    from plugin.models.embedder import BLTEmbedder
    from plugin.pipeline.cache import EmbeddingCache
    from plugin.pipeline.embed import EmbedStage
    from plugin.pipeline.score import ScoreStage
    from plugin.detect.outliers import CentroidScorer
    from plugin.detect.kmeans import ClusterModel

    emb = BLTEmbedder.from_dir(micro_model_dir)
    clusters = ClusterModel(centroids=np.eye(2, emb.dim, dtype=np.float32),
                            thresholds=np.full(2, 0.5, np.float32), sizes=np.ones(2, np.int64),
                            quantile=0.99, medoid_index=np.full(2, -1, np.int64))

    def run(name: str, bound: int) -> tuple[dict, int]:
        st = open_store(tmp_path / f"{name}.duckdb")
        st.register_model(emb.name, emb.version, emb.dim, str(micro_model_dir))
        embed = EmbedStage(emb, EmbeddingCache(st, emb.name, emb.version, max_in_memory=bound))
        score = ScoreStage(emb.name, 1, CentroidScorer(clusters), max_texts=bound)
        flow = Flow(st, normalizer, [embed, score], batch_size=6)
        for i in range(24):  # 8 texts, three rounds: the later rounds find them gone
            data = orjson.loads(record(i).data)
            data["Event"]["EventData"]["CommandLine"] = f"tool.exe /run {i % 8} {'x' * (i % 8)}"
            flow.feed(RawRecord("t.json", i, orjson.dumps(data)))
        flow.flush()
        flow.drain()
        flow.close()
        rows = {k: (c, round(sc, 5)) for k, c, sc in st.con.execute(
            "SELECT event_key, cluster, score FROM assignments").fetchall()}
        st.close()
        return rows, embed.texts_embedded

    small, embedded_small = run("small", 2)
    roomy, embedded_roomy = run("roomy", 1000)
    assert len(small) == 24 and small == roomy
    assert embedded_small == embedded_roomy == 8


def test_a_durable_batch_knows_when_its_first_record_came(store, normalizer):
    """The consumer's batch-latency metric is now minus `started` of each written batch."""
    flow = Flow(store, normalizer, batch_size=100)
    t0 = time.monotonic()
    flow.feed(record(0))
    time.sleep(0.05)
    flow.feed(record(1))
    flow.flush()
    flow.drain()
    (done,) = flow.completed()
    flow.close()
    assert t0 <= done.started <= t0 + 0.04
    assert flow.in_flight() == 0


def test_the_next_batch_is_embedded_while_this_one_is_scored(store, normalizer, micro_model_dir):
    """Embedding runs one batch ahead on its own thread; scoring on the stage thread still reads
    the surprisal of its own batch's embedding pass (per thread), never a pass of the batch
    embedded meanwhile, so the entropy model is not run a second time."""
    import threading

    from plugin.detect.surprisal import window_surprisal
    from plugin.models.embedder import BLTEmbedder
    from plugin.pipeline.cache import EmbeddingCache
    from plugin.pipeline.embed import EmbedStage

    emb = BLTEmbedder.from_dir(micro_model_dir)
    store.register_model(emb.name, emb.version, emb.dim, str(micro_model_dir))
    embed = EmbedStage(emb, EmbeddingCache(store, emb.name, emb.version))
    threads = {"embed": set(), "score": set()}
    reruns = []
    fresh = emb.model.entropy.surprisal
    emb.model.entropy.surprisal = lambda *a: reruns.append(1) or fresh(*a)
    embedded = emb.embed

    def embed_on(texts):
        threads["embed"].add(threading.current_thread().name)
        return embedded(texts)

    emb.embed = embed_on
    overlapped = []

    def score(batch):
        threads["score"].add(threading.current_thread().name)
        texts = [e.normalized for e in batch.events]
        time.sleep(0.05)  # the next batch is embedded meanwhile
        overlapped.append(embed.texts_embedded)
        window_surprisal(emb, texts)

    flow = Flow(store, normalizer, [embed, score], batch_size=2)
    for i in range(8):  # distinct texts: every batch embeds
        data = orjson.loads(record(i).data)
        data["Event"]["EventData"]["CommandLine"] = f"tool.exe /run {i} {'x' * i}"
        flow.feed(RawRecord("t.json", i, orjson.dumps(data)))
    flow.flush()
    counts = flow.drain()
    flow.close()
    assert counts.new_events == 8 and embed.texts_embedded == 8
    assert threads["embed"].isdisjoint(threads["score"])
    assert reruns == []  # every batch's surprisal came from its own embedding pass
    # while a batch was scored, a later one had already been embedded at least once
    assert any(n > 2 * (k + 1) for k, n in enumerate(overlapped))


def test_room_says_how_many_events_the_next_batch_takes_before_a_flush(store, normalizer):
    """The consumer keeps filling the next batch while both slots are taken, up to `room` - 1:
    one more would flush by size and wait for a slot without polling Kafka."""
    import threading

    gate = threading.Event()
    flow = Flow(store, normalizer, [lambda b: gate.wait(5)], batch_size=4, max_pending=2)
    try:
        assert flow.room() == 4
        for i in range(8):  # two batches by size: both slots taken, both held at the gate
            flow.feed(record(i))
        assert flow.full() and flow.room() == 4
        for i in range(8, 11):
            flow.feed(record(i))
        assert flow.room() == 1 and flow.full()  # no flush yet: nothing waited
    finally:
        gate.set()
    flow.flush()
    counts = flow.drain()
    flow.close()
    assert counts.new_events == 11


def test_texts_read_back_from_the_store_are_scored_without_a_second_entropy_pass(
        store, normalizer, micro_model_dir):
    """A text embedded by an earlier run is read back with its vector and its window surprisal
    (`text_vectors.window_bits`): a later run scores it with no entropy-model pass (an import
    after a fit re-ran the model on every such text, a third of its time) and the same value."""
    from plugin.detect.surprisal import window_surprisal
    from plugin.models.embedder import BLTEmbedder
    from plugin.pipeline.cache import EmbeddingCache
    from plugin.pipeline.embed import EmbedStage

    emb = BLTEmbedder.from_dir(micro_model_dir)
    store.register_model(emb.name, emb.version, emb.dim, str(micro_model_dir))
    texts = [f"tool.exe /run {i} {'x' * (3 * i)}" for i in range(6)]

    def run(first: int) -> tuple[dict[str, float], int]:
        embed = EmbedStage(emb, EmbeddingCache(store, emb.name, emb.version, with_bits=True))
        got = {}

        def score(batch):
            for e in batch.events:
                got[e.normalized] = float(window_surprisal(emb, [e.normalized])[0])

        flow = Flow(store, normalizer, [embed, score], batch_size=4)
        for i, cmd in enumerate(texts):
            data = orjson.loads(record(first + i).data)
            data["Event"]["EventData"]["CommandLine"] = cmd
            flow.feed(RawRecord("t.json", first + i, orjson.dumps(data)))
        flow.flush()
        flow.drain()
        flow.close()
        return got, embed.texts_embedded

    first, embedded = run(0)
    assert embedded == 6
    stored = store._run("SELECT count(*) FROM text_vectors WHERE window_bits IS NOT NULL")[0][0]
    assert stored == 6
    reruns = []
    fresh = emb.model.entropy.surprisal
    emb.model.entropy.surprisal = lambda *a: reruns.append(1) or fresh(*a)
    emb.last_surprisal = {}
    second, embedded = run(100)  # new events, known texts: a new process's stages
    assert embedded == 0 and reruns == []
    assert second.keys() == first.keys()
    for t in first:
        assert abs(second[t] - first[t]) < 1e-9
    # a vector stored without the summary (an older release) is scored by a pass, as before
    store._run("UPDATE text_vectors SET window_bits = NULL")
    third, _ = run(200)
    assert reruns and all(abs(third[t] - first[t]) < 1e-4 for t in first)
