"""The score stage: each event's vector -> cluster, distance, calibrated score, outlier flag.

Scores come per distinct canonical text (a text's score depends only on its vector and the
current fit), so repeated texts cost a dictionary lookup. The scorer is the latest `fit` of the
database; before any fit, the model directory's shipped reference centroids (version 0): the
cold start. Outliers also get an explanation and fold into alerts by canonical text.
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
                 explain: Callable[[str, TextScore], dict] | None = None) -> None:
        self.model = model
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
        mat = np.stack([vectors[h] for h in todo])
        if getattr(self.scorer, "needs_text", False):
            res = self.scorer.score(mat, [texts[h] for h in todo])
        else:
            res = self.scorer.score(mat)
        for i, h in enumerate(todo):
            self._cache[h] = TextScore(int(res.cluster[i]), float(res.distance[i]),
                                       float(res.score[i]), bool(res.is_outlier[i]), res.detail[i])
        if len(self._cache) > 2_000_000:
            self._cache.clear()

    def __call__(self, batch) -> None:
        vectors = batch.text_vectors.get(self.model)
        if not vectors:
            return
        self._score_texts(vectors, {e.text_hash: e.normalized for e in batch.events})
        explained: dict[str, str] = {}
        for e in batch.events:
            ts = self._cache[e.text_hash]
            explanation = None
            if ts.is_outlier:
                self.outliers += 1
                if self.explain is not None:
                    if e.text_hash not in explained:
                        explained[e.text_hash] = orjson.dumps(
                            self.explain(e.normalized, ts), option=orjson.OPT_SERIALIZE_NUMPY).decode()
                    explanation = explained[e.text_hash]
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
                "outliers": self.outliers, "scorer": type(self.scorer).__name__}
