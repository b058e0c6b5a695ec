"""Shared model state between consumers: a fit made elsewhere reaches a running one.

Several `consume` instances share one store; `fit` (an operator, or another instance ending its
learning period) writes a new fit version there. Each instance's fit watcher polls for it and
swaps its score and incident stages between batches, so the next batch's assignments record the
new version, without a restart; a pick-up also ends a learning period without a second fit; and
an analyst's verdict written by another connection stops the alert here on the next batch.

The swap logic is store-agnostic, so these run in one process on a DuckDB file (the micro models,
given shipped reference clusters so the cold start scores); time is an injected clock.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import orjson
import pytest

from plugin import simulate
from plugin.normalize.normalizer import Normalizer
from plugin.pipeline.batch import Batch
from plugin.pipeline.flow import Flow
from plugin.sources.base import RawRecord
from plugin.store import open_store

SRC = "kafka:sysmon/0"
POLL_S = 30.0
T0 = datetime(2099, 1, 1, tzinfo=timezone.utc)  # after every stored alert: past the quiet window


class Clock:
    """Monotonic seconds the test advances by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def records(n: int, seed: int, start: int = 0) -> list[RawRecord]:
    return [RawRecord(SRC, start + i, orjson.dumps(r))
            for i, r in enumerate(simulate.simulate_records(n, seed=seed, anomaly_rate=0.02))]


@pytest.fixture(scope="module")
def model_dir(micro_model_dir, tmp_path_factory, schemas_module) -> Path:
    """The micro models with shipped reference clusters (the BLT's with a surprisal threshold),
    so a store with no fit scores with the cold start, version 0, as the shipped model does."""
    from plugin.detect.reference import fit_reference

    d = tmp_path_factory.mktemp("model") / "m"
    shutil.copytree(micro_model_dir, d)
    norm = Normalizer(schemas_module)
    texts = [norm(r).normalized for r in records(400, seed=3)]
    fit_reference(d, texts, model="blt")
    fit_reference(d, texts, model="linformer")
    return d


@pytest.fixture(scope="module")
def schemas_module():
    from plugin.normalize.schema import load_schemas

    return load_schemas()


@pytest.fixture(scope="module")
def base_db(model_dir, tmp_path_factory, schemas_module) -> Path:
    """A closed store of 600 simulated events scored by the cold start (no fit), to copy."""
    db = tmp_path_factory.mktemp("base") / "base.duckdb"
    store = open_store(db)
    try:
        embedder, shadow = _models(model_dir)
        from plugin.pipeline.assemble import model_stages

        flow = Flow(store, Normalizer(schemas_module),
                    model_stages(store, embedder, str(model_dir), shadow, 1.0), batch_size=10_000)
        for r in records(600, seed=4):
            flow.feed(r)
        flow.flush()
        assert flow.drain().new_events == 600
        flow.close()
        assert store.latest_fit(embedder.name, embedder.version) is None
    finally:
        store.close()
    return db


def _models(model_dir: Path):
    from plugin.models.linformer_embedder import LinformerEmbedder
    from plugin.pipeline.assemble import load_embedder

    return load_embedder(str(model_dir)), LinformerEmbedder.from_dir(model_dir)


class Running:
    """One consumer's stages over a copy of the base store, fed batch by batch as `consume`
    feeds them (one flow, stages on its thread), with the versions each batch was scored with."""

    def __init__(self, base_db: Path, tmp_path: Path, model_dir: Path, schemas) -> None:
        from plugin.pipeline.assemble import model_stages

        shutil.copy(base_db, tmp_path / "store.duckdb")
        self.store = open_store(tmp_path / "store.duckdb")
        self.model_dir = str(model_dir)
        self.embedder, self.shadow = _models(model_dir)
        self.stages = model_stages(self.store, self.embedder, self.model_dir, self.shadow, 1.0)
        self.clock = Clock()
        self.versions: list[dict[str, set[int]]] = []
        self._normalizer = Normalizer(schemas)
        self._flow: Flow | None = None
        self._seed = 100
        self._position = 100_000  # after the base store's events

    def start(self, *front) -> None:
        """The flow over ``front`` (the fit watcher), the model stages, and a probe."""
        self._flow = Flow(self.store, self._normalizer, [*front, *self.stages, self._probe],
                          batch_size=10_000)

    def _probe(self, batch: Batch) -> None:
        seen: dict[str, set[int]] = {}
        for a in batch.assignments:
            seen.setdefault(a["model"], set()).add(a["version"])
        self.versions.append(seen)

    def batch(self, n: int = 50) -> dict[str, set[int]]:
        """Feed n new events as one batch; the versions that scored them (as stored, too)."""
        self._seed += 1
        recs = records(n, seed=self._seed, start=self._position)
        self._position += n
        for r in recs:
            self._flow.feed(r)
        self._flow.flush()
        assert self._flow.drain().new_events == n
        seen = self.versions[-1]
        stored = self.store.con.execute(
            "SELECT a.model, list(DISTINCT a.version) FROM assignments a JOIN events e "
            "USING (event_key) WHERE e.source = ? AND e.position >= ? GROUP BY a.model",
            [SRC, self._position - n]).fetchall()
        assert {m: set(v) for m, v in stored} == seen
        return seen

    def fit_elsewhere(self) -> int:
        """What `sysmon-blt fit` (or another instance) does to the shared store."""
        from plugin.detect.fitting import fit_database

        e, s = self.embedder, self.shadow
        v = fit_database(self.store, e.name, e.version, embedder=e)["version"]
        fit_database(self.store, s.name, s.version, flags_of=e.name)
        return v

    def stage(self, cls, model: str = "blt"):
        return next(st for st in self.stages if isinstance(st, cls) and st.model == model)

    def close(self) -> None:
        if self._flow is not None:
            self._flow.close()
        self.store.close()


@pytest.fixture
def running(base_db, tmp_path, model_dir, schemas_module):
    r = Running(base_db, tmp_path, model_dir, schemas_module)
    yield r
    r.close()


def fits_of(store, model: str) -> list[int]:
    return [v for (v,) in store.con.execute(
        "SELECT version FROM fits WHERE model = ? AND origin = 'fit' ORDER BY version",
        [model]).fetchall()]


# -- the fit watcher ------------------------------------------------------------------------------
@pytest.mark.parametrize("every_s", [POLL_S, 0])
def test_a_fit_made_elsewhere_is_picked_up_between_batches(running, every_s):
    """The batch after the poll interval is scored with the new fit (primary and shadow), its
    assignments record the version, and the incident stage roots on the fit's context; within
    the interval, and with polling off (0), the old fit keeps scoring."""
    from plugin.pipeline.assemble import fit_watcher
    from plugin.pipeline.incidents import IncidentStage
    from plugin.pipeline.score import ScoreStage

    r = running
    watcher = fit_watcher(r.store, r.stages, r.embedder, r.shadow, r.model_dir, every_s, r.clock)
    switches: list[tuple[str, int, int]] = []
    watcher.on_switch(lambda *s: switches.append(s))
    r.start(watcher)
    assert r.batch() == {"blt": {0}, "linformer": {0}}
    assert r.fit_elsewhere() == 1
    r.clock.t += POLL_S / 3
    assert r.batch() == {"blt": {0}, "linformer": {0}}  # not polled yet
    r.clock.t += POLL_S
    score, incidents = r.stage(ScoreStage), r.stage(IncidentStage)
    if every_s == 0:
        assert r.batch() == {"blt": {0}, "linformer": {0}}
        assert switches == [] and watcher.polls == 0 and score.case is not None
        return
    assert r.batch() == {"blt": {1}, "linformer": {1}}
    assert switches == [("blt", 0, 1), ("linformer", 0, 1)]
    assert score.case is None and score.context is not None  # the fit's, not the cold start's
    assert incidents.grouper.context is score.context.model
    r.clock.t += POLL_S  # nothing newer: nothing switches again
    assert r.batch() == {"blt": {1}, "linformer": {1}} and len(switches) == 2


def test_a_poll_with_nothing_new_is_one_small_query_per_model(running, monkeypatch):
    """Between polls a batch asks the store nothing; a poll with no newer fit reads each model's
    latest version and loads no fit (no baseline read)."""
    from plugin.pipeline.assemble import fit_watcher, model_stages

    r = running
    r.fit_elsewhere()  # the stages below start on fit 1
    r.stages = model_stages(r.store, r.embedder, r.model_dir, r.shadow, 1.0)
    watcher = fit_watcher(r.store, r.stages, r.embedder, r.shadow, r.model_dir, POLL_S, r.clock)
    r.start(watcher)
    calls: list[str] = []
    for name in ("latest_fit", "fit_baseline", "fit_clusters"):
        real = getattr(r.store, name)
        monkeypatch.setattr(r.store, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    assert r.batch() == {"blt": {1}, "linformer": {1}}
    assert calls == []
    r.clock.t += POLL_S
    assert r.batch() == {"blt": {1}, "linformer": {1}}
    assert calls == ["latest_fit", "latest_fit"] and watcher.polls == 1


def test_a_failed_poll_keeps_the_old_fit_and_retries(running, monkeypatch):
    """The catalog briefly unreachable: the batch is scored and stored with the fit it has, and
    the next poll switches."""
    from plugin.pipeline.assemble import fit_watcher

    r = running
    watcher = fit_watcher(r.store, r.stages, r.embedder, r.shadow, r.model_dir, POLL_S, r.clock)
    r.start(watcher)
    r.fit_elsewhere()
    real = r.store.latest_fit

    def down(*a):
        raise OSError("catalog unreachable")

    monkeypatch.setattr(r.store, "latest_fit", down)
    r.clock.t += POLL_S
    assert r.batch() == {"blt": {0}, "linformer": {0}}
    monkeypatch.setattr(r.store, "latest_fit", real)
    r.clock.t += POLL_S
    assert r.batch() == {"blt": {1}, "linformer": {1}}


# -- the learning period --------------------------------------------------------------------------
def _learning(r, finish):
    from plugin.stream.learning import LearningPeriod

    return LearningPeriod(r.store, hours=0, events=1, finish=finish)


def test_the_learning_period_adopts_a_fit_made_elsewhere_instead_of_fitting(running):
    """An instance whose period ends after another instance (or an operator) fitted switches to
    that fit: no second fit is stored, and the cold start's calibration and bar are gone."""
    from plugin.pipeline.assemble import finish_learning
    from plugin.pipeline.score import ScoreStage

    r = running
    score = r.stage(ScoreStage)
    assert score.case is not None  # the cold start: this store had no fit
    score.alert_bar = 2.0
    learning = _learning(r, lambda: finish_learning(r.store, r.stages, r.embedder, r.shadow,
                                                    r.model_dir))
    r.fit_elsewhere()
    assert learning.due()
    res = learning.run()
    assert res["adopted"] and res["version"] == 1 and learning.ended
    assert fits_of(r.store, "blt") == [1] and fits_of(r.store, "linformer") == [1]
    assert score.version == 1 and score.case is None and score.alert_bar == 1.0
    assert r.stage(ScoreStage, "linformer").version == 1


def test_the_learning_period_fits_when_nobody_else_has(running):
    """The control: with no fit in the store, the end of the period fits here."""
    from plugin.pipeline.assemble import finish_learning
    from plugin.pipeline.score import ScoreStage

    r = running
    learning = _learning(r, lambda: finish_learning(r.store, r.stages, r.embedder, r.shadow,
                                                    r.model_dir))
    res = learning.run()
    assert not res.get("adopted") and res["version"] == 1 and fits_of(r.store, "blt") == [1]
    assert r.stage(ScoreStage).version == 1


def test_a_fit_picked_up_during_learning_ends_the_period_without_a_fit(running):
    """Through `consume`'s wiring: the watcher's pick-up of the primary's fit ends the period
    (the gauge drops, the pick-up is counted), and a run already scheduled then fits nothing."""
    from plugin.cli.stream import watch_fits
    from plugin.config import Config
    from plugin.stream.metrics import StreamMetrics

    r = running
    finished: list[bool] = []
    learning = _learning(r, lambda: finished.append(True) or {})
    metrics = StreamMetrics()
    metrics.learning.set(1)
    watcher = watch_fits(r.store, r.stages, r.embedder, r.shadow,
                         Config(fit_poll_seconds=POLL_S), metrics, learning, clock=r.clock)
    r.start(watcher)
    r.batch()
    r.fit_elsewhere()
    r.clock.t += POLL_S
    assert r.batch() == {"blt": {1}, "linformer": {1}}
    assert learning.ended and not learning.due()
    assert learning.run() == {} and finished == []
    assert fits_of(r.store, "blt") == [1]
    value = metrics.registry.get_sample_value
    assert value("sysmon_blt_learning") == 0
    assert value("sysmon_blt_fits_picked_up_total", {"model": "blt"}) == 1
    assert value("sysmon_blt_fits_picked_up_total", {"model": "linformer"}) == 1


# -- verdicts ------------------------------------------------------------------------------------
class Producer:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append(json.loads(value))

    def poll(self, timeout: float) -> None:
        pass


def _stores(kind: str, tmp_path: Path):
    """(this instance's store, another writer's): a second connection to the DuckDB file, or a
    second DuckLake client (its own DuckDB instance) on the same SQLite catalog and data."""
    if kind == "duckdb":
        store = open_store(tmp_path / "s.duckdb")
        return store, store.for_thread()
    db, data = f"ducklake:sqlite:{tmp_path / 'catalog.sqlite'}", str(tmp_path / "data")
    store = open_store(db, data_path=data)
    return store, open_store(db, data_path=data)


@pytest.mark.parametrize("kind", ["duckdb", "lake"])
def test_a_verdict_written_by_another_writer_stops_the_alert_on_the_next_batch(
        kind, tmp_path, schemas_module):
    """Two open alerts alert; another writer marks one a false positive; its next twin (past
    the quiet window) is folded silently here, while the other's still goes out. Fails if the
    publisher kept statuses in memory."""
    from plugin.normalize.normalizer import NormalizedEvent
    from plugin.stream.publish import AlertPublisher

    store, other = _stores(kind, tmp_path)
    try:
        def alert_all(batch: Batch) -> None:
            for e in batch.events:
                batch.alerts.append({"alert_id": f"a{e.position:023d}", "event_key": e.event_key,
                                     "model": "blt", "score": 2.0, "ts": e.ts})

        flow = Flow(store, Normalizer(schemas_module), [alert_all], batch_size=100)
        for r in records(2, seed=7):
            flow.feed(r)
        flow.flush()
        flow.drain()
        flow.close()
        marked, kept = sorted(a["alert_id"] for a in store.list_alerts(top=None))
        publisher = AlertPublisher(Producer(), "alerts", store, "blt", "v", quiet_minutes=60)

        def twins(ts: datetime) -> list[str]:
            """A twin of each alert at ``ts``, published as one batch: the ids sent."""
            events, alerts = [], []
            for n, aid in enumerate((marked, kept)):
                key = f"twin-{n}-{ts:%H}"
                events.append(NormalizedEvent(key, "test", n, 1, "WS01", None, ts, None, None,
                                              "test", f"eid=1 twin={n}", f"{n:064x}", "{}",
                                              json.dumps({"twin": n})))
                alerts.append({"alert_id": aid, "event_key": key, "model": "blt",
                               "score": 2.0, "ts": ts})
            before = len(publisher.producer.sent)
            publisher(Batch(events, alerts=alerts))
            return [m["alert_id"] for m in publisher.producer.sent[before:]
                    if m.get("kind") == "alert"]

        assert twins(T0) == [marked, kept]  # both open, past the stored last_seen's quiet hour
        other.mark_alert(marked, "false_positive", "benign backup job", "erin")
        assert twins(T0 + timedelta(hours=2)) == [kept]  # the verdict holds here at once
    finally:
        other.close()
        store.close()


def test_enrich_in_the_consumer_scores_with_the_fit_picked_up(running, schemas_module):
    """`consume --serve`: /enrich answers with the fit the stages switched to, not the one it
    loaded at start (its per-text cache held the old fit's scores)."""
    from plugin.detect.enrich import Enricher

    r = running
    enricher = Enricher.for_store(r.store, r.embedder, Path(r.model_dir), schemas_module)
    doc = json.loads(records(1, seed=77)[0].data)
    assert enricher.enrich(doc)["sysmon_blt"]["fit_version"] == 0
    assert r.fit_elsewhere() == 1
    assert enricher.enrich(doc)["sysmon_blt"]["fit_version"] == 0  # until it is told
    assert enricher.use_latest_fit(Path(r.model_dir)) == 1
    block = enricher.enrich(doc)["sysmon_blt"]
    assert block["fit_version"] == 1 and "explanation" in block
