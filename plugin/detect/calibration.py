"""Threshold calibration helpers shared by every scorer.

A scorer divides its raw score by a threshold taken as a high weighted quantile of the
baseline's raw scores, so ``score == 1.0`` means "at the ``quantile`` of the baseline".
Weights are event counts: vectors and texts are stored once per distinct canonical text.
"""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_quantile", "THRESHOLD_FLOOR"]

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
