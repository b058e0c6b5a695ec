"""Surprisal scoring: how unexpected an event's bytes are to the entropy model.

The BLT's entropy model gives every byte a surprisal (-log2 p). An event's score is the highest
mean surprisal over a window of `window` bytes: one strange stretch (an encoded blob, a random
path) stands out even inside a long, ordinary command line, where a whole-text mean would
dilute it. Calibrated like the other scorers: 1.0 is the `quantile` of baseline scores.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from plugin.detect.calibration import THRESHOLD_FLOOR, weighted_quantile
from plugin.models.blt.surprisal import WINDOW
from plugin.models.blt.surprisal import window_max as _window_max


def window_surprisal(embedder, texts: Sequence[str], window: int = WINDOW) -> np.ndarray:
    """Per text: the highest mean surprisal (bits/byte) over `window` consecutive bytes.

    Texts the embedder has just embedded reuse the surprisal of that pass (`last_surprisal`),
    texts whose stored vector came with its window maximum reuse that (`last_window_bits`, at
    the default window); only the others run the entropy model here.
    """
    out = np.zeros(len(texts), dtype=np.float64)
    known = getattr(embedder, "last_surprisal", {})
    stored = getattr(embedder, "last_window_bits", {}) if window == WINDOW else {}
    todo = []
    for i, t in enumerate(texts):
        v = known.get(t)
        if v is not None:
            out[i] = _window_max(v, window)
        elif t in stored:
            out[i] = stored[t]
        else:
            todo.append(i)
    if todo:
        # the entropy model runs where the model lives: here, or in an embedding worker
        for i, flat in zip(todo, embedder.byte_surprisal([texts[i] for i in todo])):
            out[i] = _window_max(flat, window)
    return out


class SurprisalScorer:
    def __init__(self, embedder, baseline_texts: Sequence[str], weights: np.ndarray | None = None,
                 quantile: float = 0.99, sample: int = 8000, seed: int = 0,
                 bits: np.ndarray | None = None) -> None:
        """``bits``: the baseline texts' window surprisal when the caller has it already (a fit
        that scores every baseline text for the context); else a sample is computed here."""
        self.embedder = embedder
        idx = np.arange(len(baseline_texts))
        if len(idx) > sample:
            idx = np.sort(np.random.default_rng(seed).choice(len(idx), sample, replace=False))
        base = (np.asarray(bits, dtype=np.float64)[idx] if bits is not None
                else window_surprisal(embedder, [baseline_texts[i] for i in idx]))
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[idx]
        self.threshold = max(weighted_quantile(base, w, quantile), THRESHOLD_FLOOR)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        return window_surprisal(self.embedder, texts) / self.threshold


class SurprisalFirstScorer:
    """The default content scorer: score = calibrated window surprisal (the entropy model's view
    of the event's bytes), chosen by the LSASS leave-one-capture-out evaluation (README). After a
    fit, `plugin.detect.context` adds prevalence and lineage per event on top; the cluster and
    the vector-space measures of `vector_scorer` (centroid, or kNN after a fit) stay beside it in
    `detail`, so assignments keep their KMeans cluster and explanations their nearest baseline."""

    needs_text = True

    def __init__(self, embedder, threshold: float, vector_scorer) -> None:
        self.embedder = embedder
        self.threshold = max(float(threshold), THRESHOLD_FLOOR)
        self.vector_scorer = vector_scorer

    def score(self, vectors: np.ndarray, texts: Sequence[str]):
        from plugin.detect.outliers import Scored

        base = self.vector_scorer.score(vectors)
        bits = window_surprisal(self.embedder, texts)
        score = bits / self.threshold
        detail = []
        for i, d in enumerate(base.detail):
            detail.append({**d, "scorer": "surprisal", "window_bits_per_byte": round(float(bits[i]), 4),
                           "surprisal_threshold": round(self.threshold, 4),
                           "vector_score": float(base.score[i])})
        return Scored(cluster=base.cluster, distance=base.distance, score=score,
                      is_outlier=score >= 1.0, detail=detail)
