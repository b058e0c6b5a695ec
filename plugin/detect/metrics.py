"""Detection metrics for `sysmon-blt eval`, one definition shared by every scorer and baseline.

Why one function: the eval table compares our scorers with the TF-IDF and Drain3 anchors, and a
comparison is only fair when every row is computed the same way. TPR at 1% FPR follows the issue
exactly: the share of attack events whose score is strictly above the 99th percentile
(``np.quantile(..., 0.99)``, linear interpolation) of the ordinary test events' scores. Undefined
metrics (no attack or no ordinary events) come back as None instead of raising, so an eval over
many captures reports what it can.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["detection_metrics", "tpr_at_fpr"]


def tpr_at_fpr(scores: np.ndarray, is_attack: np.ndarray, fpr: float = 0.01) -> tuple[float | None, float | None]:
    """(TPR, threshold): share of attack scores ``>`` the (1 - fpr) quantile of ordinary scores.

    None for both when either class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_attack = np.asarray(is_attack, dtype=bool).ravel()
    attack, ordinary = scores[is_attack], scores[~is_attack]
    if attack.size == 0 or ordinary.size == 0:
        return None, None
    threshold = float(np.quantile(ordinary, 1.0 - fpr))
    return float(np.mean(attack > threshold)), threshold


def detection_metrics(scores: np.ndarray, is_attack: np.ndarray, flagged: np.ndarray | None = None) -> dict:
    """ROC-AUC, average precision, TPR at 1% FPR and flag rates for one scorer on one test set.

    ``scores``: higher = more anomalous. ``is_attack``: the labels. ``flagged``: the scorer's own
    outlier decisions (e.g. ``score >= 1.0``), optional. Keys: ``roc_auc``, ``average_precision``,
    ``tpr_at_1pct_fpr``, ``threshold_1pct_fpr``, ``flagged_share_ordinary``,
    ``flagged_share_attack``, ``n_attack``, ``n_ordinary``; a metric that is undefined for these
    inputs is None. NaN scores count as the least anomalous (a scorer that failed on an event
    must not earn credit for it). Raises ValueError only when the arrays' lengths differ.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_attack = np.asarray(is_attack, dtype=bool).ravel()
    if scores.shape != is_attack.shape:
        raise ValueError(f"scores ({scores.size}) and is_attack ({is_attack.size}) differ in length")
    if flagged is not None:
        flagged = np.asarray(flagged, dtype=bool).ravel()
        if flagged.shape != scores.shape:
            raise ValueError(f"flagged ({flagged.size}) and scores ({scores.size}) differ in length")
    if np.isnan(scores).any():
        finite = scores[np.isfinite(scores)]
        low = (finite.min() - 1.0) if finite.size else 0.0
        scores = np.where(np.isnan(scores), low, scores)
    # +-inf are fine for ranking, but quantile interpolation between inf values gives nan
    scores = np.nan_to_num(scores, nan=0.0, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)

    n_attack = int(is_attack.sum())
    n_ordinary = int(is_attack.size - n_attack)
    both = n_attack > 0 and n_ordinary > 0
    tpr, threshold = tpr_at_fpr(scores, is_attack, 0.01)
    out: dict = {
        "roc_auc": float(roc_auc_score(is_attack, scores)) if both else None,
        "average_precision": float(average_precision_score(is_attack, scores)) if both else None,
        "tpr_at_1pct_fpr": tpr,
        "threshold_1pct_fpr": threshold,
        "flagged_share_ordinary": None,
        "flagged_share_attack": None,
        "n_attack": n_attack,
        "n_ordinary": n_ordinary,
    }
    if flagged is not None:
        if n_ordinary:
            out["flagged_share_ordinary"] = float(flagged[~is_attack].mean())
        if n_attack:
            out["flagged_share_attack"] = float(flagged[is_attack].mean())
    return out
