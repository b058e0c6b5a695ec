"""Scoring on arrival: calibrated outlier scores from fixed clusters and/or a kNN baseline index.

No refit per event: every scorer is built once (from shipped centroids, or from a fitted
baseline) and then scores batches of vectors. All scores share one convention, the one the
``assignments`` table documents: ``score`` is float64, finite, higher = more anomalous, and
calibrated so ``1.0`` is the outlier threshold (``is_outlier = score >= 1.0``) for every model and
cluster. Each scorer divides a raw distance by a threshold taken at a high quantile of the same
distance measured on baseline data, so 1.0 means "as far as the ``quantile`` of the baseline".

* :class:`CentroidScorer` is the cold start: it needs only the shipped centroids and thresholds.
* :class:`KnnScorer` is the stronger signal: cosine distance to the k-th nearest distinct baseline
  vector. A baseline vector's nearest neighbour is itself, so its threshold is calibrated on a
  held-out split (see the class).
* :class:`CombinedScorer` merges the two calibrated scores (mean or max, plus a cluster-rarity
  term) and recalibrates the result on the same held-out split, so 1.0 keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration import THRESHOLD_FLOOR, weighted_quantile
from .kmeans import ClusterModel, assign, normalize_rows

__all__ = ["Scored", "CentroidScorer", "KnnScorer", "CombinedScorer", "knn_search"]

#: Bytes of similarity matrix per chunk in :func:`knn_search` (bounded memory on a small host).
_CHUNK_BYTES = 256 * 1024 * 1024


@dataclass
class Scored:
    """One batch of scores, row-aligned with the input vectors.

    Attributes:
        cluster: (n,) int64 nearest KMeans cluster (-1 when the scorer has no clusters).
        distance: (n,) float64 the raw distance behind ``score`` (centroid distance for
            :class:`CentroidScorer`, k-th-neighbour distance for :class:`KnnScorer` and
            :class:`CombinedScorer`).
        score: (n,) float64 calibrated score; 1.0 is the outlier threshold.
        is_outlier: (n,) bool, ``score >= 1.0``.
        detail: one JSON-ready dict per row with the raw measures behind the score.
    """

    cluster: np.ndarray
    distance: np.ndarray
    score: np.ndarray
    is_outlier: np.ndarray
    detail: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.score.shape[0])


def _finite(score: np.ndarray) -> np.ndarray:
    """float64 scores with NaN/inf replaced, so a bad vector can never poison a sort or a table."""
    return np.nan_to_num(np.asarray(score, dtype=np.float64), nan=0.0, posinf=1e6, neginf=0.0)


def _vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Normalize query vectors and check their dimension; an empty batch is allowed."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1 and x.size == 0:
        x = x.reshape(0, dim)
    x = normalize_rows(x)
    if x.shape[1] != dim:
        raise ValueError(f"vectors have dimension {x.shape[1]}, the scorer expects {dim}")
    return x


def knn_search(queries: np.ndarray, index: np.ndarray, k: int = 1,
               exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-nearest-neighbour search by chunked matmul.

    Returns (distance to the k-th nearest neighbour, float64 (n,); index of the nearest neighbour,
    int64 (n,)). Inputs must be unit-norm float32.

    Brute force keeps the answer exact or near-exact with no index to build; the cost is the
    matmul (150k x 50k x 128 is ~2 TFLOP, ~45 s in float32 on 2 busy cores). So large searches
    (``exact=None`` and more than 1e9 query-index pairs, or ``exact=False``) run a bfloat16 matmul
    (about twice as fast on AVX-512-BF16 CPUs) to shortlist ``k + 15`` candidates per query, then
    rescore the shortlist exactly in float32. The returned distances are exact float32 cosine
    distances to real baseline vectors; a true neighbour is only missed if 16+ others tie with it
    within bfloat16 rounding (~1e-3), in which case the returned one is within that margin.
    Queries are processed in chunks so the similarity block stays under ``_CHUNK_BYTES``. torch is
    used when importable; numpy (exact) otherwise.
    """
    nq, ni = queries.shape[0], index.shape[0]
    kk = max(1, min(int(k), ni))
    dist = np.zeros(nq, dtype=np.float64)
    nearest = np.full(nq, -1, dtype=np.int64)
    if nq == 0 or ni == 0:
        if ni == 0:
            dist[:] = 1.0
        return dist, nearest
    if exact is None:
        exact = nq * ni <= 1_000_000_000
    rows = max(1, min(nq, _CHUNK_BYTES // (4 * ni)))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch ships with the project
        torch = None
    if torch is not None:
        idx_t = torch.from_numpy(np.ascontiguousarray(index, dtype=np.float32))
        n_cand = min(ni, kk + 15)
        with torch.inference_mode():
            idx_b = None if exact else idx_t.to(torch.bfloat16)
            for s in range(0, nq, rows):
                q = torch.from_numpy(np.ascontiguousarray(queries[s:s + rows], dtype=np.float32))
                if exact:
                    sims = q @ idx_t.T
                    if kk == 1:
                        top, arg = sims.max(dim=1)
                        top, arg = top.unsqueeze(1), arg.unsqueeze(1)
                    else:
                        top, arg = torch.topk(sims, kk, dim=1, largest=True, sorted=True)
                else:
                    cand = torch.topk(q.to(torch.bfloat16) @ idx_b.T, n_cand, dim=1, sorted=False).indices
                    exact_sims = torch.einsum("qd,qcd->qc", q, idx_t[cand])
                    top, pos = torch.topk(exact_sims, kk, dim=1, largest=True, sorted=True)
                    arg = torch.gather(cand, 1, pos)
                dist[s:s + rows] = 1.0 - top[:, -1].double().numpy()
                nearest[s:s + rows] = arg[:, 0].numpy()
    else:  # pragma: no cover
        for s in range(0, nq, rows):
            sims = queries[s:s + rows] @ index.T
            nearest[s:s + rows] = np.argmax(sims, axis=1)
            kth = -np.partition(-sims, kk - 1, axis=1)[:, kk - 1]
            dist[s:s + rows] = 1.0 - kth.astype(np.float64)
    return np.clip(dist, 0.0, 2.0), nearest


class CentroidScorer:
    """Cold-start scorer from the clusters alone (shipped centroids need no event data).

    ``score = distance / thresholds[cluster]``: the cosine distance to the nearest centroid over
    that cluster's baseline quantile, so 1.0 is the same quantile in a tight cluster and a loose
    one. Weak on its own (16 centroids summarize a whole corpus coarsely), but it is all there is
    before a local ``fit``.
    """

    def __init__(self, clusters: ClusterModel) -> None:
        if clusters.k == 0:
            raise ValueError("CentroidScorer needs at least one centroid")
        self.clusters = clusters
        self._centroids = normalize_rows(clusters.centroids)
        self._thresholds = np.maximum(np.asarray(clusters.thresholds, dtype=np.float64), THRESHOLD_FLOOR)

    def raw(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster, distance, score) without the per-row detail dicts (for internal batch use)."""
        x = _vectors(vectors, self.clusters.dim)
        cluster, dist = assign(x, self._centroids)
        score = _finite(dist / self._thresholds[cluster]) if cluster.size else np.zeros(0)
        return cluster, dist, score

    def score(self, vectors: np.ndarray) -> Scored:
        """Score a batch; ``detail`` holds distance, threshold and cluster size per row."""
        cluster, dist, score = self.raw(vectors)
        thr, sizes = self._thresholds, self.clusters.sizes
        detail = [{"scorer": "centroid", "cluster": int(c), "distance": float(d),
                   "threshold": float(thr[c]), "cluster_size": int(sizes[c])}
                  for c, d in zip(cluster.tolist(), dist.tolist())]
        return Scored(cluster=cluster, distance=dist, score=score, is_outlier=score >= 1.0, detail=detail)


class KnnScorer:
    """Distance to the nearest baseline events in vector space, calibrated on a held-out split.

    Calibration: a baseline vector's nearest neighbour is itself (distance 0), so the baseline
    cannot calibrate its own kNN distances. Instead the distinct baseline is split at random
    (``seed``): an index of ``1 - holdout`` of it, and a holdout whose kNN distances to that index
    stand in for "new but ordinary" events. The threshold is the ``quantile`` of those distances,
    weighted by event counts. Scoring then searches the *full* baseline (more neighbours can only
    shorten distances), so the threshold is slightly conservative: on ordinary traffic at most
    about ``1 - quantile`` of events, typically fewer, reach 1.0. Holdout texts are treated as
    novel although a recurring text usually matches exactly on arrival, another conservative bias.

    Tiny baselines: if the split leaves no holdout or an index with fewer than ``k`` vectors, the
    threshold comes from leave-one-out on the full baseline (the (k+1)-th neighbour, skipping self);
    with ``k`` or fewer distinct vectors there is no spread to learn and the threshold is the floor,
    so anything not identical to a baseline vector is an outlier.

    ``k`` > 1 uses the distance to the k-th nearest distinct vector (robust to a single stray
    baseline event near an attack); ``detail`` still names the nearest one, for display.
    """

    def __init__(self, baseline: np.ndarray, weights: np.ndarray | None = None, k: int = 1,
                 quantile: float = 0.99, clusters: ClusterModel | None = None, holdout: float = 0.2,
                 seed: int = 0) -> None:
        base = normalize_rows(baseline)
        if base.shape[0] == 0:
            raise ValueError("KnnScorer needs a non-empty baseline")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        w = np.ones(base.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != base.shape[0] or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite, non-negative, one per baseline vector")
        self.baseline, self.weights = base, w
        self.k, self.quantile, self.clusters = max(1, int(k)), float(quantile), clusters
        self._centroid = CentroidScorer(clusters) if clusters is not None else None

        n = base.shape[0]
        n_hold = int(round(float(holdout) * n))
        rng = np.random.default_rng(seed)
        if n_hold >= 1 and n - n_hold >= self.k:
            perm = rng.permutation(n)
            hold, fit = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
            cal_dist, _ = knn_search(base[hold], base[fit], self.k)
            self.calibration = "holdout"
        elif n > self.k:
            hold = np.arange(n)
            cal_dist, _ = knn_search(base, base, self.k + 1)  # the first neighbour is self
            self.calibration = "leave-one-out"
        else:
            hold, cal_dist = np.zeros(0, dtype=np.int64), np.zeros(0)
            self.calibration = "floor"
        #: held-out baseline rows and their kNN distances (reused by :class:`CombinedScorer`)
        self.holdout_index, self.holdout_distance = hold, cal_dist
        self.threshold = max(weighted_quantile(cal_dist, w[hold], self.quantile) if hold.size else 0.0,
                             THRESHOLD_FLOOR)

    def raw(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(k-th neighbour distance, nearest baseline index, score) without detail dicts."""
        x = _vectors(vectors, self.baseline.shape[1])
        dist, nearest = knn_search(x, self.baseline, self.k)
        return dist, nearest, _finite(dist / self.threshold)

    def score(self, vectors: np.ndarray) -> Scored:
        """Score a batch; ``detail`` holds kNN distance, threshold, nearest baseline index and,
        with clusters, the nearest cluster and its centroid distance and threshold."""
        x = _vectors(vectors, self.baseline.shape[1])
        dist, nearest, score = self.raw(x)
        if self._centroid is not None:
            cluster, cdist, cscore = self._centroid.raw(x)
        else:
            cluster = np.full(x.shape[0], -1, dtype=np.int64)
            cdist = cscore = None
        detail = []
        for i in range(x.shape[0]):
            d = {"scorer": "knn", "knn_distance": float(dist[i]), "threshold": float(self.threshold),
                 "nearest_index": int(nearest[i]), "k": self.k}
            if cdist is not None:
                c = int(cluster[i])
                d.update(cluster=c, centroid_distance=float(cdist[i]),
                         cluster_threshold=float(self._centroid._thresholds[c]),
                         centroid_score=float(cscore[i]), cluster_size=int(self.clusters.sizes[c]))
            detail.append(d)
        return Scored(cluster=cluster, distance=dist, score=score, is_outlier=score >= 1.0, detail=detail)


class CombinedScorer:
    """kNN and centroid evidence in one calibrated score.

    ``raw = agg(knn_score, centroid_score) + rarity_weight * rarity(cluster)``, with ``agg`` the
    mean or the max of the two calibrated scores and ``rarity = log((total + k) / (size + 1)) /
    log(total + k)`` in [0, 1] (1 for an empty cluster, near 0 for a cluster holding almost all
    events). Neither mean nor max of two scores that each put 1.0 at a quantile keeps 1.0 at that
    quantile (the max flags the union of both tails), so the raw value is recalibrated: divided by
    the ``quantile`` of ``raw`` on the kNN scorer's held-out rows (weighted by counts). Without a
    holdout (tiny baselines) it is left uncalibrated (divisor 1). The defaults are a plain starting
    point, not tuned; the evaluation picks the scorer.
    """

    def __init__(self, knn: KnnScorer, clusters: ClusterModel | None = None, how: str = "mean",
                 rarity_weight: float = 0.25) -> None:
        clusters = clusters if clusters is not None else knn.clusters
        if clusters is None:
            raise ValueError("CombinedScorer needs clusters (pass them here or to the KnnScorer)")
        if how not in ("mean", "max"):
            raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
        self.knn, self.clusters, self.how = knn, clusters, how
        self.rarity_weight = float(rarity_weight)
        self.centroid = CentroidScorer(clusters)
        total = float(np.asarray(clusters.sizes, dtype=np.float64).sum())
        denom = np.log(total + clusters.k) if total + clusters.k > 1 else 1.0
        self._rarity = np.clip(np.log((total + clusters.k) / (np.asarray(clusters.sizes, dtype=np.float64) + 1.0))
                               / denom, 0.0, 1.0)
        self.threshold = 1.0
        hold = knn.holdout_index
        if knn.calibration != "floor" and hold.size:
            knn_s = knn.holdout_distance / knn.threshold
            cluster, _, cen_s = self.centroid.raw(knn.baseline[hold])
            raw = self._combine(knn_s, cen_s, cluster)
            self.threshold = max(weighted_quantile(raw, knn.weights[hold], knn.quantile), THRESHOLD_FLOOR)

    def _combine(self, knn_s: np.ndarray, cen_s: np.ndarray, cluster: np.ndarray) -> np.ndarray:
        agg = (knn_s + cen_s) / 2.0 if self.how == "mean" else np.maximum(knn_s, cen_s)
        return agg + self.rarity_weight * self._rarity[cluster]

    def score(self, vectors: np.ndarray) -> Scored:
        """Score a batch; ``detail`` holds both component scores, rarity and the raw measures."""
        x = _vectors(vectors, self.knn.baseline.shape[1])
        dist, nearest, knn_s = self.knn.raw(x)
        cluster, cdist, cen_s = self.centroid.raw(x)
        raw = self._combine(knn_s, cen_s, cluster)
        score = _finite(raw / self.threshold)
        detail = [{"scorer": f"combined-{self.how}", "knn_distance": float(dist[i]),
                   "knn_threshold": float(self.knn.threshold), "knn_score": float(knn_s[i]),
                   "nearest_index": int(nearest[i]), "cluster": int(cluster[i]),
                   "centroid_distance": float(cdist[i]),
                   "cluster_threshold": float(self.centroid._thresholds[cluster[i]]),
                   "centroid_score": float(cen_s[i]), "cluster_size": int(self.clusters.sizes[cluster[i]]),
                   "rarity": float(self._rarity[cluster[i]]), "raw": float(raw[i]),
                   "threshold": float(self.threshold)}
                  for i in range(x.shape[0])]
        return Scored(cluster=cluster, distance=dist, score=score, is_outlier=score >= 1.0, detail=detail)
