"""The score stage: each event's vector -> cluster, distance, calibrated score, outlier flag.

Scores come per distinct canonical text (a text's score depends only on its vector and the
current fit), so repeated texts cost a dictionary lookup. The scorer is the latest `fit` of the
database; before any fit, the model directory's shipped reference centroids (version 0): the
cold start. Outliers also get an explanation and fold into alerts by canonical text.

With a fit that learned context (`plugin.detect.context`), the text's score is the content part
of a per-event score: plus image-path prevalence and the process tree's carried suspicion,
recalibrated so 1.0 still marks the outlier threshold. Events must arrive in log order for the
lineage to reach (sources and `rescore` keep it).

Without a fit, a ``case`` calibration (`plugin.detect.calibration.CaseCalibration`) rescales the
cold start's content score by what this run's own events show is rare, so a first import of a
fleet the shipped model never saw does not flag a fifth of it; and the context terms are learned
from the case too (`plugin.detect.context.CaseContext`: binaries this case had not run before,
and the process tree's carried suspicion).

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

from plugin.detect.calibration import CaseCalibration
from plugin.detect.context import CaseContext, ContextScorer, process_fields, process_view
from plugin.detect.lineage import ProcessIndex
from plugin.detect.scoring import EventScore, TextScore, event_score, explanation, score_texts
from plugin.memory import LRU
from plugin.pipeline.batch import Batch

log = structlog.get_logger(__name__)

#: texts whose scores are kept, least recently used out (~0.5 KB each): an import's default; a
#: consumer passes its smaller ``stream_cache_texts``. A text out and seen again is scored again.
MAX_CACHED_TEXTS = 200_000
MAX_CACHED_EXPLANATIONS = 50_000


class ScoreStage:
    def __init__(self, model: str, version: int, scorer, *,
                 explain: Callable[[str, TextScore], dict] | None = None,
                 alerts: bool = True, context=None, case: CaseCalibration | None = None,
                 max_texts: int = MAX_CACHED_TEXTS, embed_max_bytes: int | None = None) -> None:
        self.model = model
        #: the model saw only this many bytes of a text (None: no byte bound): a longer text's
        #: score says so in its detail, and the stored event keeps the whole record
        self.embed_max_bytes = embed_max_bytes
        self.case = case
        #: the cold start's context terms, learned from the case (None after a fit)
        self.case_context = (CaseContext(min_events=case.min_events)
                             if case is not None and context is None else None)
        self.alerts = alerts
        # process creations seen so far, for the lineage in outliers' explanations
        self.processes = ProcessIndex() if explain is not None else None
        self.version = version
        self.scorer = scorer
        self.explain = explain
        #: per-event context on top of the per-text content score (None: content only)
        self.context = ContextScorer(context) if context is not None else None
        self.name = f"score:{model}"
        self._cache: LRU[str, TextScore] = LRU(max_texts)
        # per-text part of outliers' explanations (an entropy-model pass each), across batches:
        # a stream repeats its outlier texts, and recomputing them grew with the stream
        self._explained: LRU[str, dict] = LRU(min(max_texts, MAX_CACHED_EXPLANATIONS))
        #: the first walk's explanations, when this stage settles on it (their text-only parts)
        self._explained_before: LRU[str, dict] | None = None
        self.outliers = 0
        self.scored = 0
        #: the score an outlier needs to become an alert: 1.0, or higher during a consumer's
        #: learning period (outliers are stored either way)
        self.alert_bar = 1.0

    def use_fit(self, version: int, scorer, *, explain=None, context=None) -> None:
        """Score from now on with a new fit (the consumer's automatic fit at the end of its
        learning period, or a newer fit the fit watcher found in a shared store): the per-text
        caches belonged to the old scorer, the case calibration to the cold start. Called
        between batches on the stage thread, so each batch's assignments carry the one
        ``version`` that scored them."""
        self.version = version
        self.scorer = scorer
        self.explain = explain if explain is not None else self.explain
        self.context = ContextScorer(context) if context is not None else None
        self.case = None
        self.case_context = None
        self.alert_bar = 1.0
        self._cache.clear()
        self._explained.clear()
        self._explained_before = None

    def settle_on(self, first: ScoreStage) -> bool:
        """Score this pass with the whole-case thresholds that ``first`` (a stage that walked
        the same case before, calibrating as it went) ended with; the walk itself starts again.
        False when there is nothing to settle: a fit scored ``first``, or its case stayed too
        small to calibrate on."""
        if first.case is None or not first.case.warm or self.case is None:
            return False
        self.case = first.case.settled()
        self.case_context = first.case_context.settled() if first.case_context else None
        self._explained_before = first._explained
        return True

    def _score_texts(self, vectors: dict[str, np.ndarray],
                     texts: dict[str, str]) -> dict[str, TextScore]:
        """The batch's texts' scores: cached, or scored now (and cached). Returned whole, as a
        batch with more new texts than the cache holds pushes some of its own out."""
        out = {h: self._cache[h] for h in vectors if h in self._cache}
        todo = [h for h in vectors if h not in out]
        if todo:
            scored = score_texts(self.scorer, np.stack([vectors[h] for h in todo]),
                                 [texts[h] for h in todo])
            out.update(zip(todo, scored))
            self._cache.update(zip(todo, scored))
        return out

    def __call__(self, batch: Batch) -> None:
        vectors = batch.text_vectors.get(self.model)
        if not vectors:
            return
        scores = self._score_texts(vectors, {e.text_hash: e.normalized for e in batch.events})
        if self.processes is not None:
            self.processes.add(batch.events)
        recalibrated = self._case_scores(batch, scores) if self.case is not None else {}
        in_case = (self._case_context(batch, vectors, scores, recalibrated)
                   if self.case_context is not None else {})
        scored = []
        for e in batch.events:
            if e.text_hash not in vectors:  # not in this model's sample
                continue
            ts = recalibrated.get(e.event_key) or scores[e.text_hash]
            ev = in_case.get(e.event_key)
            if ev is None:
                cs = (self.context.score(e.event_id, _fields(batch, e), e.normalized, ts.score)
                      if self.context is not None else None)
                ev = event_score(ts, self.context.model if self.context is not None else None, cs)
            scored.append((e, ts, ev))
        self._prefetch_explanations(scored)
        for e, ts, ev in scored:
            text_explanation = None
            if ev.is_outlier:
                self.outliers += 1
            if self._alerts_on(ev):
                if self.explain is not None:
                    text_explanation = orjson.dumps(
                        explanation(self.explain, e.normalized, ts, ev,
                                    self.processes.lineage_of(e.fields), self._explained,
                                    self._explained_before),
                        option=orjson.OPT_SERIALIZE_NUMPY).decode()
                batch.alerts.append({
                    "alert_id": hashlib.sha256(f"{self.model}|{e.text_hash}".encode()).hexdigest()[:24],
                    "event_key": e.event_key, "model": self.model, "score": ev.score,
                    "ts": e.ts,
                })
            detail = ev.detail
            cut = self._truncated(e.normalized)
            if cut is not None:
                detail = {**detail, "truncated_for_embedding": cut}
            batch.assignments.append({
                "event_key": e.event_key, "model": self.model, "version": self.version,
                "cluster": ts.cluster, "distance": ts.distance, "score": ev.score,
                "is_outlier": ev.is_outlier,
                "detail": orjson.dumps(detail, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                "explanation": text_explanation,
            })
            self.scored += 1

    def _prefetch_explanations(self, scored: list) -> None:
        """One entropy-model pass for the batch's alerting texts that need an explanation and
        whose surprisal no embed pass left: with the model in a worker, one request instead of
        one per text, each waiting behind the next batch's embedding."""
        prefetch = getattr(self.explain, "prefetch", None)
        if prefetch is None:
            return
        before = self._explained_before
        texts = {e.normalized for e, _ts, ev in scored
                 if self._alerts_on(ev) and e.normalized not in self._explained
                 and (before is None or e.normalized not in before)}
        if texts:
            prefetch(sorted(texts))

    def _alerts_on(self, ev: EventScore) -> bool:
        """Whether this event raises an alert (and so gets an explanation)."""
        return ev.is_outlier and self.alerts and ev.score >= self.alert_bar

    def _truncated(self, text: str) -> dict | None:
        """``{"text_bytes": n, "embedded_bytes": m}`` when the model embedded only the first
        ``m`` of the canonical text's ``n`` UTF-8 bytes, else None."""
        limit = self.embed_max_bytes
        if limit is None or 4 * len(text) <= limit:  # at most 4 bytes a character
            return None
        n = len(text.encode("utf-8", "replace"))  # as `to_bytes` counts them
        return {"text_bytes": n, "embedded_bytes": limit} if n > limit else None

    def _case_scores(self, batch: Batch, scores: dict[str, TextScore]) -> dict[str, TextScore]:
        """Per event (by key): its text's score against the case threshold, after stacking (how
        often this case has shown the text so far) and after adding the batch's events to the
        case's quantile (so a first batch calibrates itself)."""
        events = [e for e in batch.events if e.text_hash in scores
                  and scores[e.text_hash].detail.get("window_bits_per_byte") is not None]
        bits = np.array([scores[e.text_hash].detail["window_bits_per_byte"] for e in events],
                        dtype=np.float64)
        values = self.case.stacked([e.text_hash for e in events], bits)
        self.case.observe(values)
        threshold, bar = self.case.threshold(), self.case.outlier_bar()
        out = {}
        for e, v in zip(events, values):
            ts = scores[e.text_hash]
            score = float(v) / threshold
            out[e.event_key] = TextScore(ts.cluster, ts.distance, score, score >= bar,
                                         {**ts.detail, "surprisal_threshold": round(threshold, 4),
                                          "stacked_bits_per_byte": round(float(v), 4),
                                          "calibration": "case" if self.case.warm else "shipped",
                                          "outlier_bar": bar})
        return out

    def _case_context(self, batch: Batch, vectors: dict, scores: dict[str, TextScore],
                      recalibrated: dict[str, TextScore]) -> dict[str, EventScore]:
        """Per event (by key): its score with the case's context terms, walked in log order,
        judged against the case's threshold after the batch's raw scores joined it. Until the
        case calibration is warm, events are walked (paths and carries learned) but keep their
        content score: the shipped threshold's content scores are too loose to carry down a
        tree (on 127 small captures of attack samples they flagged 14% of events)."""
        walked = []
        for e in batch.events:
            if e.text_hash not in vectors:
                continue
            ts = recalibrated.get(e.event_key) or scores[e.text_hash]
            walked.append((e.event_key, ts, *self.case_context.walk(
                e.computer, e.event_id, _fields(batch, e), e.normalized, ts.score)))
        if not walked or (self.case is not None and not self.case.warm):
            return {}
        self.case_context.observe(np.array([w[2] for w in walked], dtype=np.float64))
        threshold, bar = self.case_context.threshold(), self.case_context.outlier_bar()
        out = {}
        for key, ts, raw, novel, carry in walked:
            parts = self.case_context.detail(raw, ts.score, novel, carry, threshold)
            score = raw / threshold
            # until the context's quantile is trusted it only adds outliers (at ``bar``): the
            # content's own verdict stands
            flagged = score >= bar or (bar > 1.0 and ts.is_outlier)
            out[key] = EventScore(score, flagged, {**ts.detail, **parts,
                                                   "context_outlier_bar": bar}, parts)
        return out

    def stats(self) -> dict:
        return {"name": self.name, "version": self.version, "scored": self.scored,
                "outliers": self.outliers, "alerts": self.alerts, "scorer": type(self.scorer).__name__,
                "context": self.context is not None,
                "calibration": ({**self.case.describe(), **(self.case_context.describe()
                                                             if self.case_context else {})}
                                if self.case is not None else
                                {"calibration": "shipped" if self.version == 0 else f"fit {self.version}"})}


def _fields(batch: Batch, e) -> dict:
    """An event's process GUIDs; {} when its fields are absent or unreadable (the event is still
    scored, on its content and prevalence)."""
    return process_fields(process_view(batch.views, e.event_key, e.fields))
