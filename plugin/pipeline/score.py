"""The score stage: each event's vector -> cluster, distance, calibrated score, outlier flag.

Scores come per distinct canonical text (a text's score depends only on its vector and the
current fit), so repeated texts cost a dictionary lookup. The scorer is the latest `fit` of the
database; before any fit, the model directory's shipped reference centroids (version 0): the
cold start. Outliers also get an explanation and fold into alerts by canonical text.

A shadow model's stage runs with ``alerts=False``: its scores and flags are stored beside the
primary's for comparison, but only the primary's flags reach users as alerts. Events whose text
the shadow did not sample (no vector) get no shadow assignment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import orjson
import structlog

log = structlog.get_logger(__name__)


@dataclass
class TextScore:
    cluster: int
    distance: float
    score: float
    is_outlier: bool
    detail: dict


class ScoreStage:
    def __init__(self, model: str, version: int, scorer, *,
                 explain: Callable[[str, TextScore], dict] | None = None,
                 alerts: bool = True) -> None:
        from plugin.detect.lineage import ProcessIndex

        self.model = model
        self.alerts = alerts
        # process creations seen so far, for the lineage in outliers' explanations
        self.processes = ProcessIndex() if explain is not None else None
        self.version = version
        self.scorer = scorer
        self.explain = explain
        self.name = f"score:{model}"
        self._cache: dict[str, TextScore] = {}
        self.outliers = 0
        self.scored = 0

    def _score_texts(self, vectors: dict[str, np.ndarray], texts: dict[str, str]) -> None:
        todo = [h for h in vectors if h not in self._cache]
        if not todo:
            return
        if len(self._cache) + len(todo) > 2_000_000:  # bound memory; before adding this batch's
            self._cache.clear()
        mat = np.stack([vectors[h] for h in todo])
        if getattr(self.scorer, "needs_text", False):
            res = self.scorer.score(mat, [texts[h] for h in todo])
        else:
            res = self.scorer.score(mat)
        for i, h in enumerate(todo):
            self._cache[h] = TextScore(int(res.cluster[i]), float(res.distance[i]),
                                       float(res.score[i]), bool(res.is_outlier[i]), res.detail[i])

    def __call__(self, batch) -> None:
        vectors = batch.text_vectors.get(self.model)
        if not vectors:
            return
        self._score_texts(vectors, {e.text_hash: e.normalized for e in batch.events})
        if self.processes is not None:
            self.processes.add(batch.events)
        explained: dict[str, dict] = {}
        for e in batch.events:
            if e.text_hash not in vectors:  # not in this model's sample
                continue
            ts = self._cache[e.text_hash]
            explanation = None
            if ts.is_outlier:
                self.outliers += 1
            if ts.is_outlier and self.alerts:
                if self.explain is not None:
                    if e.text_hash not in explained:  # per text; the lineage is per event
                        explained[e.text_hash] = self.explain(e.normalized, ts)
                    explanation = orjson.dumps(
                        {**explained[e.text_hash],
                         "process_lineage": self.processes.lineage_of(e.fields)},
                        option=orjson.OPT_SERIALIZE_NUMPY).decode()
                batch.alerts.append({
                    "alert_id": hashlib.sha256(f"{self.model}|{e.text_hash}".encode()).hexdigest()[:24],
                    "event_key": e.event_key, "model": self.model, "score": ts.score,
                    "ts": e.ts,
                })
            batch.assignments.append({
                "event_key": e.event_key, "model": self.model, "version": self.version,
                "cluster": ts.cluster, "distance": ts.distance, "score": ts.score,
                "is_outlier": ts.is_outlier,
                "detail": orjson.dumps(ts.detail, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                "explanation": explanation,
            })
            self.scored += 1

    def stats(self) -> dict:
        return {"name": self.name, "version": self.version, "scored": self.scored,
                "outliers": self.outliers, "alerts": self.alerts, "scorer": type(self.scorer).__name__}
