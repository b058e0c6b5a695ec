"""The score stage: each event's vector -> cluster, distance, calibrated score, outlier flag.

Scores come per distinct canonical text (a text's score depends only on its vector and the
current fit), so repeated texts cost a dictionary lookup. The scorer is the latest `fit` of the
database; before any fit, the model directory's shipped reference centroids (version 0): the
cold start. Outliers also get an explanation and fold into alerts by canonical text.

With a fit that learned context (`plugin.detect.context`), the text's score is the content part
of a per-event score: plus image-path prevalence and the process tree's carried suspicion,
recalibrated so 1.0 still marks the outlier threshold. Events must arrive in log order for the
lineage to reach (sources and `rescore` keep it).

A shadow model's stage runs with ``alerts=False``: its scores and flags are stored beside the
primary's for comparison, but only the primary's flags reach users as alerts. Events whose text
the shadow did not sample (no vector) get no shadow assignment.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import orjson
import structlog

from plugin.detect.context import ContextScorer, process_fields
from plugin.detect.lineage import ProcessIndex
from plugin.detect.scoring import TextScore, event_score, explanation, score_texts
from plugin.pipeline.batch import Batch

log = structlog.get_logger(__name__)

MAX_CACHED_TEXTS = 2_000_000
MAX_CACHED_EXPLANATIONS = 50_000


class ScoreStage:
    def __init__(self, model: str, version: int, scorer, *,
                 explain: Callable[[str, TextScore], dict] | None = None,
                 alerts: bool = True, context=None) -> None:
        self.model = model
        self.alerts = alerts
        # process creations seen so far, for the lineage in outliers' explanations
        self.processes = ProcessIndex() if explain is not None else None
        self.version = version
        self.scorer = scorer
        self.explain = explain
        #: per-event context on top of the per-text content score (None: content only)
        self.context = ContextScorer(context) if context is not None else None
        self.name = f"score:{model}"
        self._cache: dict[str, TextScore] = {}
        # per-text part of outliers' explanations (an entropy-model pass each), across batches:
        # a stream repeats its outlier texts, and recomputing them grew with the stream
        self._explained: dict[str, dict] = {}
        self.outliers = 0
        self.scored = 0

    def _score_texts(self, vectors: dict[str, np.ndarray], texts: dict[str, str]) -> None:
        todo = [h for h in vectors if h not in self._cache]
        if not todo:
            return
        if len(self._cache) + len(todo) > MAX_CACHED_TEXTS:  # bound memory, before this batch
            self._cache.clear()
        scored = score_texts(self.scorer, np.stack([vectors[h] for h in todo]),
                             [texts[h] for h in todo])
        self._cache.update(zip(todo, scored))

    def __call__(self, batch: Batch) -> None:
        vectors = batch.text_vectors.get(self.model)
        if not vectors:
            return
        self._score_texts(vectors, {e.text_hash: e.normalized for e in batch.events})
        if self.processes is not None:
            self.processes.add(batch.events)
        if len(self._explained) > MAX_CACHED_EXPLANATIONS:
            self._explained.clear()
        for e in batch.events:
            if e.text_hash not in vectors:  # not in this model's sample
                continue
            ts = self._cache[e.text_hash]
            cs = (self.context.score(e.event_id, _fields(e.fields), e.normalized, ts.score)
                  if self.context is not None else None)
            ev = event_score(ts, self.context.model if self.context is not None else None, cs)
            text_explanation = None
            if ev.is_outlier:
                self.outliers += 1
            if ev.is_outlier and self.alerts:
                if self.explain is not None:
                    text_explanation = orjson.dumps(
                        explanation(self.explain, e.normalized, ts, ev,
                                    self.processes.lineage_of(e.fields), self._explained),
                        option=orjson.OPT_SERIALIZE_NUMPY).decode()
                batch.alerts.append({
                    "alert_id": hashlib.sha256(f"{self.model}|{e.text_hash}".encode()).hexdigest()[:24],
                    "event_key": e.event_key, "model": self.model, "score": ev.score,
                    "ts": e.ts,
                })
            batch.assignments.append({
                "event_key": e.event_key, "model": self.model, "version": self.version,
                "cluster": ts.cluster, "distance": ts.distance, "score": ev.score,
                "is_outlier": ev.is_outlier,
                "detail": orjson.dumps(ev.detail, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                "explanation": text_explanation,
            })
            self.scored += 1

    def stats(self) -> dict:
        return {"name": self.name, "version": self.version, "scored": self.scored,
                "outliers": self.outliers, "alerts": self.alerts, "scorer": type(self.scorer).__name__,
                "context": self.context is not None}


def _fields(fields_json: str) -> dict:
    """An event's process GUIDs from its fields JSON; {} when absent or unreadable (the event
    is still scored, on its content and prevalence)."""
    if not fields_json:
        return {}
    try:
        return process_fields(orjson.loads(fields_json))
    except orjson.JSONDecodeError:
        return {}
