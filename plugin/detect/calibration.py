"""Threshold calibration helpers shared by every scorer.

A scorer divides its raw score by a threshold taken as a high weighted quantile of the
baseline's raw scores, so ``score == 1.0`` means "at the ``quantile`` of the baseline".
Weights are event counts: vectors and texts are stored once per distinct canonical text.
"""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_quantile", "THRESHOLD_FLOOR", "StreamingQuantile", "CaseCalibration"]

#: Smallest threshold ever used, so identical baselines (all distances 0) never divide by zero.
THRESHOLD_FLOOR = 1e-6


def weighted_quantile(values: np.ndarray, weights: np.ndarray | None, q: float) -> float:
    """Weighted quantile, inverted-CDF definition (same as ``np.quantile(..., method="inverted_cdf")``).

    The smallest value ``v`` with at least a share ``q`` of the total weight at or below it. This is
    the natural definition for count weights: a text seen 10 times counts as 10 identical events.
    Returns 0.0 for empty input or zero total weight.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = w > 0
    v, w = v[keep], w[keep]
    if v.size == 0:
        return 0.0
    order = np.argsort(v, kind="stable")
    v, cw = v[order], np.cumsum(w[order])
    idx = int(np.searchsorted(cw, float(q) * cw[-1], side="left"))
    return float(v[min(idx, v.size - 1)])


class StreamingQuantile:
    """An event-weighted quantile of a stream of values in a fixed histogram: constant memory
    for a run of any length, to a bin's width (``high / bins``). Values outside ``[0, high)`` count
    in the edge bins."""

    def __init__(self, high: float, bins: int) -> None:
        self.high = float(high)
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.n = 0
        self.frozen = False

    def frozen_copy(self) -> StreamingQuantile:
        """A copy that keeps this distribution: its `observe` adds nothing (a whole case's
        quantile, learned on a first pass, judging the case's events on the second)."""
        out = StreamingQuantile(self.high, self.bins)
        out.counts = self.counts.copy()
        out.n = self.n
        out.frozen = True
        return out

    def observe(self, values: np.ndarray) -> None:
        if self.frozen:
            return
        v = np.clip(np.asarray(values, dtype=np.float64).reshape(-1), 0.0, self.high - 1e-9)
        np.add.at(self.counts, (v / self.high * self.bins).astype(np.int64), 1)
        self.n += v.size

    def quantile(self, q: float) -> float:
        """The values' ``q`` quantile so far (the upper edge of its bin); 0.0 before any value."""
        if self.n == 0:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(self.counts), q * self.n, side="left"))
        return (min(idx, self.bins - 1) + 1) * self.high / self.bins


class CaseCalibration:
    """The cold start's own calibration: a threshold taken from this run's events.

    Without a fit, the shipped threshold comes from the model's training corpus, and on a fleet
    it never saw (other software, other paths) a fifth of ordinary events can sit above it. So
    a run without a fit learns, without trusting it, what is rare *here*: an event-weighted
    streaming quantile of the content measure (window surprisal, bits per byte) over every event
    of this import or stream so far, in a fixed histogram (constant memory, any run length).
    The threshold is the higher of the shipped one and that quantile: a quiet case keeps the
    shipped bar, a noisy one flags at most about ``1 - quantile`` of its events by content.

    Until ``min_events`` events are seen the quantile is not trusted yet: the shipped threshold
    applies and only scores of at least ``bar`` count as outliers (the first batch of an import
    is usually far larger than that, so an import calibrates from its first batch on).
    """

    #: how much each doubling of a text's count in this case lowers its score (stacking: what
    #: the case repeats is its routine, however odd its bytes look to the shipped model)
    STACKING = 0.1
    MAX_TEXTS = 1_000_000
    BITS_MAX = 32.0  # -log2 p of a byte the model finds very unlikely exceeds 8 bits
    BINS = 3200  # 0.01 bits per bin

    def __init__(self, shipped_threshold: float, quantile: float = 0.98,
                 min_events: int = 1000, bar: float = 2.0) -> None:
        self.shipped = max(float(shipped_threshold), THRESHOLD_FLOOR)
        self.quantile = quantile
        self.min_events = min_events
        self.bar = bar
        self.hist = StreamingQuantile(self.BITS_MAX, self.BINS)
        self.text_events: dict[str, int] = {}  # text hash -> events of this case so far

    def stacked(self, text_hashes: list[str], bits: np.ndarray) -> np.ndarray:
        """Count the events' texts, then each event's content measure lowered by how often this
        case has shown its text so far: ``bits / (1 + STACKING * log2(count))``."""
        if len(self.text_events) > self.MAX_TEXTS:  # bound memory on an endless stream
            self.text_events.clear()
        n = np.empty(len(text_hashes), dtype=np.float64)
        for i, h in enumerate(text_hashes):
            c = self.text_events.get(h, 0) + 1
            self.text_events[h] = c
            n[i] = c
        return np.asarray(bits, dtype=np.float64) / (1.0 + self.STACKING * np.log2(n))

    def observe(self, bits: np.ndarray) -> None:
        """Add events' content measures (one value per event, twins included)."""
        self.hist.observe(bits)

    def settled(self) -> CaseCalibration:
        """The same calibration for a second pass over the same case: its text counts start
        again (the stacking walks the case as the first pass did), its quantile is the whole
        case's, fixed (`plugin.pipeline.settle`)."""
        out = CaseCalibration(self.shipped, self.quantile, self.min_events, self.bar)
        out.hist = self.hist.frozen_copy()
        return out

    @property
    def events(self) -> int:
        return self.hist.n

    @property
    def warm(self) -> bool:
        return self.events >= self.min_events

    def case_quantile(self) -> float:
        """The events' ``quantile`` of bits per byte so far (the upper edge of its bin)."""
        return self.hist.quantile(self.quantile)

    def threshold(self) -> float:
        return max(self.shipped, self.case_quantile()) if self.warm else self.shipped

    def outlier_bar(self) -> float:
        """The score an outlier needs: 1.0 once calibrated, ``bar`` before."""
        return 1.0 if self.warm else self.bar

    def describe(self) -> dict:
        return {"calibration": "case" if self.warm else "shipped (case not yet calibrated)",
                "case_events": self.events, "whole_case": self.hist.frozen, "case_quantile": self.quantile,
                "case_bits_per_byte": round(self.case_quantile(), 4),
                "shipped_threshold": round(self.shipped, 4),
                "threshold": round(self.threshold(), 4), "outlier_bar": self.outlier_bar()}
