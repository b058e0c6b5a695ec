"""KMeans clusters over event vectors, with calibrated per-cluster distance thresholds.

Why this shape:

* Event vectors are L2-normalized, so cosine geometry is the natural one. On unit vectors the
  squared Euclidean distance is ``2 * (1 - cos)``, so plain (mini-batch) KMeans on the unit
  vectors optimizes the cosine objective; the centroids are then re-normalized (a spherical-KMeans
  step) and every distance in this module, and in :mod:`plugin.detect.outliers`, is the cosine
  distance ``1 - dot`` against those unit centroids. Members are re-assigned with the normalized
  centroids so the thresholds are computed exactly the way events are later scored.
* Many events share one canonical text and vectors are stored once per distinct text, so fitting
  takes distinct vectors plus integer ``weights`` (event counts). Every statistic (KMeans objective,
  silhouette average, thresholds, cluster sizes) is weighted by those counts, so the result is what
  fitting on every event would give, at the cost of the distinct texts only.
* A threshold is a high weighted quantile of the baseline members' distances to their centroid.
  Scoring divides by it, so ``score == 1.0`` means "at the ``quantile`` of this cluster's baseline"
  in every cluster, however tight or loose the cluster is.
* Clusters with little weight (< ``min_cluster_weight`` events) give unstable high quantiles (the
  0.99 quantile of 5 points is simply their maximum, and one odd member moves it arbitrarily far),
  so they fall back to the global quantile over all members.

Pure numpy / scikit-learn; no I/O. :func:`to_arrays` / :func:`from_arrays` give a flat dict of
arrays suitable for safetensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from plugin.detect.calibration import THRESHOLD_FLOOR, weighted_quantile

__all__ = [
    "ClusterModel",
    "fit_clusters",
    "to_arrays",
    "from_arrays",
    "normalize_rows",
    "assign",
    "weighted_silhouette",
]


@dataclass
class ClusterModel:
    """Fitted clusters: what ships in the model directory and what ``clusters`` rows hold.

    Attributes:
        centroids: (k, d) float32, L2-normalized (a zero row only if the whole input was zero).
        thresholds: (k,) float32 per-cluster cosine-distance threshold (a high quantile of the
            baseline members' distances; floored at :data:`THRESHOLD_FLOOR`).
        sizes: (k,) int64 weighted baseline members per cluster (events, not distinct texts).
        quantile: the quantile the thresholds were taken at.
        medoid_index: (k,) int64 index into the fitted distinct vectors of each cluster's most
            typical member (closest to the centroid, ties to the heavier one); -1 for an empty
            cluster. Callers map it to a canonical text for explanations.
    """

    centroids: np.ndarray
    thresholds: np.ndarray
    sizes: np.ndarray
    quantile: float
    medoid_index: np.ndarray

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.centroids.shape[1])


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; zero (or non-finite) rows become zero rows.

    Defensive: stored vectors are already unit-norm, but a renormalization is cheap and keeps
    ``1 - dot`` a true cosine distance in [0, 2] even for hand-made or slightly drifted input.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(x / safe, dtype=np.float32)


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Validate event counts: default 1 each; non-negative and finite."""
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights has {w.shape[0]} entries for {n} vectors")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    return w


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine: returns (cluster int64, cosine distance float64 in [0, 2]).

    Inputs are expected unit-norm (see :func:`normalize_rows`); k is small so one matmul suffices.
    """
    x = np.asarray(vectors, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    sims = x @ c.T
    cluster = np.argmax(sims, axis=1).astype(np.int64)
    dist = 1.0 - sims[np.arange(x.shape[0]), cluster].astype(np.float64)
    return cluster, np.clip(dist, 0.0, 2.0)


def weighted_silhouette(x: np.ndarray, labelings: list[np.ndarray], weights: np.ndarray | None = None,
                        chunk: int = 1024) -> list[float]:
    """Cosine-distance silhouette for several labelings of the same points, in one pass.

    Why not ``sklearn.metrics.silhouette_score``: choosing k scores ~6 labelings of the same sample,
    and sklearn recomputes the O(n^2 d) distance matrix for each. Here each chunk of the distance
    matrix is computed once and reduced against every labeling with a cheap (n x k) one-hot matmul.
    The per-point silhouettes are averaged with ``weights`` (event counts), so frequent texts count
    as often as they occur; the cluster means inside a silhouette are over distinct points
    (unweighted), which matches sklearn exactly when ``weights`` is None.
    """
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    w = _weights(weights, n)
    onehots, counts = [], []
    for lab in labelings:
        lab = np.asarray(lab, dtype=np.int64)
        k = int(lab.max()) + 1 if n else 0
        oh = np.zeros((n, k), dtype=np.float32)
        oh[np.arange(n), lab] = 1.0
        onehots.append(oh)
        counts.append(oh.sum(axis=0).astype(np.float64))
    sil = [np.zeros(n, dtype=np.float64) for _ in labelings]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        d = np.clip(1.0 - x[start:stop] @ x.T, 0.0, 2.0)
        for j, (lab, oh, cnt) in enumerate(zip(labelings, onehots, counts)):
            sums = (d @ oh).astype(np.float64)  # (chunk, k): summed distance to each cluster
            own = np.asarray(lab[start:stop], dtype=np.int64)
            rows = np.arange(stop - start)
            own_cnt = cnt[own]
            a = np.where(own_cnt > 1, sums[rows, own] / np.maximum(own_cnt - 1, 1), 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                means = np.where(cnt > 0, sums / np.where(cnt > 0, cnt, 1.0), np.inf)
            means[rows, own] = np.inf
            b = means.min(axis=1)
            denom = np.maximum(a, b)
            s = np.where((denom > 0) & np.isfinite(b), (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
            s[own_cnt <= 1] = 0.0  # sklearn convention: singleton clusters score 0
            sil[j][start:stop] = s
    total = w.sum()
    return [float((s * w).sum() / total) if total > 0 else 0.0 for s in sil]


def _count_unique(x: np.ndarray, limit: int) -> int:
    """Number of distinct rows, capped at ``limit`` (only used to cap k; byte-level row identity)."""
    if x.shape[0] == 0:
        return 0
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).reshape(-1)
    return min(int(np.unique(rows).size), limit)


def _kmeans(x: np.ndarray, w: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded MiniBatchKMeans on unit vectors; returns L2-normalized float32 centroids."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    km = MiniBatchKMeans(n_clusters=k, n_init=3, random_state=seed, batch_size=2048,
                         max_iter=100, max_no_improvement=10)
    # Small fits run single-threaded: OpenMP thread start-up and spin-waiting dominate below a few
    # million values and, on a busy 2-core host, made a 2000 x 32 fit ~100x slower (1 s vs 0.01 s).
    threads = 1 if x.size < 4_000_000 else None
    with warnings.catch_warnings(), threadpool_limits(limits=threads, user_api="openmp"):
        # duplicates or near-duplicates can leave fewer distinct clusters than k; that is handled
        # below (empty clusters get size 0 and medoid -1), so the warning is noise here
        warnings.simplefilter("ignore")
        km.fit(x, sample_weight=w)
    return normalize_rows(km.cluster_centers_)


def _k_grid(k_range: tuple[int, int], n_points: int) -> list[int]:
    """A coarse geometric grid of ~6 k values inside k_range, valid for a silhouette (2..n-1)."""
    lo, hi = int(min(k_range)), int(max(k_range))
    grid = np.unique(np.round(np.geomspace(max(lo, 1), max(hi, 1), num=6)).astype(int))
    return [int(k) for k in grid if 2 <= k <= n_points - 1]


def fit_clusters(vectors: np.ndarray, weights: np.ndarray | None = None, k: int | None = None,
                 k_range: tuple[int, int] = (4, 32), quantile: float = 0.99, seed: int = 0,
                 sample: int = 20000, min_cluster_weight: float = 20.0) -> ClusterModel:
    """Fit clusters and per-cluster thresholds on distinct baseline vectors.

    Args:
        vectors: (n, d) distinct baseline vectors (renormalized defensively; zero rows allowed).
        weights: (n,) event counts per distinct vector (default 1 each); zero-weight rows are ignored.
        k: number of clusters; None chooses it by silhouette over a coarse grid of ``k_range``.
        k_range: (low, high) range for the silhouette search.
        quantile: threshold quantile of the weighted baseline distances (e.g. 0.99).
        seed: seeds the sample and KMeans, so a fit is reproducible.
        sample: at most this many distinct points (uniform draw, weights carried along) are used to
            choose k; the final fit uses every point.
        min_cluster_weight: clusters with less weight fall back to the global quantile.

    Degenerate input is handled, not raised on: k is capped at the number of distinct vectors (all
    identical -> k = 1, thresholds floored so nothing divides by zero); zero vectors stay zero and
    sit at distance 1 from every centroid. Only an empty input (or zero total weight) raises,
    because there is nothing to fit.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    x_all = normalize_rows(vectors)
    w_all = _weights(weights, x_all.shape[0])
    keep = np.flatnonzero(w_all > 0)
    if keep.size == 0:
        raise ValueError("fit_clusters needs at least one vector with positive weight")
    x, w = x_all[keep], w_all[keep]
    n = x.shape[0]
    rng = np.random.default_rng(seed)

    if k is not None:
        k_eff = max(1, min(int(k), _count_unique(x, int(k))))
    else:
        hi = int(max(k_range))
        n_unique = _count_unique(x, hi + 1)
        if n > sample:
            idx = np.sort(rng.choice(n, size=int(sample), replace=False))
        else:
            idx = np.arange(n)
        xs, ws = x[idx], w[idx]
        grid = _k_grid(k_range, min(n_unique, _count_unique(xs, hi + 1)))
        if not grid:
            k_eff = max(1, min(int(min(k_range)), n_unique))
        else:
            labelings = []
            for kk in grid:
                cents = _kmeans(xs, ws, kk, seed)
                labelings.append(assign(xs, cents)[0])
            scores = weighted_silhouette(xs, labelings, ws)
            k_eff = grid[int(np.argmax(scores))]  # first (smallest) k wins ties

    centroids = _kmeans(x, w, k_eff, seed) if k_eff > 1 else normalize_rows(
        (x * w[:, None]).sum(axis=0, keepdims=True))
    labels, dist = assign(x, centroids)

    global_thr = weighted_quantile(dist, w, quantile)
    thresholds = np.empty(k_eff, dtype=np.float64)
    sizes = np.zeros(k_eff, dtype=np.int64)
    medoid = np.full(k_eff, -1, dtype=np.int64)
    for c in range(k_eff):
        members = np.flatnonzero(labels == c)
        cw = float(w[members].sum())
        sizes[c] = int(round(cw))
        if members.size:
            # most typical member: smallest distance, ties broken by the heavier text
            best = members[np.lexsort((-w[members], dist[members]))[0]]
            medoid[c] = keep[best]
        thresholds[c] = weighted_quantile(dist[members], w[members], quantile) if cw >= min_cluster_weight \
            else global_thr
    thresholds = np.maximum(thresholds, THRESHOLD_FLOOR).astype(np.float32)
    return ClusterModel(centroids=centroids.astype(np.float32), thresholds=thresholds, sizes=sizes,
                        quantile=float(quantile), medoid_index=medoid)


def to_arrays(model: ClusterModel) -> dict[str, np.ndarray]:
    """Flat dict of contiguous arrays (safetensors-ready; the quantile is a (1,) float64 array)."""
    return {
        "centroids": np.ascontiguousarray(model.centroids, dtype=np.float32),
        "thresholds": np.ascontiguousarray(model.thresholds, dtype=np.float32),
        "sizes": np.ascontiguousarray(model.sizes, dtype=np.int64),
        "quantile": np.array([model.quantile], dtype=np.float64),
        "medoid_index": np.ascontiguousarray(model.medoid_index, dtype=np.int64),
    }


def from_arrays(d: dict[str, np.ndarray]) -> ClusterModel:
    """Inverse of :func:`to_arrays`; validates shapes so a corrupt file fails loudly here."""
    centroids = np.asarray(d["centroids"], dtype=np.float32)
    if centroids.ndim != 2:
        raise ValueError(f"centroids must be 2-d, got shape {centroids.shape}")
    k = centroids.shape[0]
    thresholds = np.asarray(d["thresholds"], dtype=np.float32).reshape(-1)
    sizes = np.asarray(d["sizes"], dtype=np.int64).reshape(-1)
    medoid = np.asarray(d.get("medoid_index", np.full(k, -1)), dtype=np.int64).reshape(-1)
    for name, arr in (("thresholds", thresholds), ("sizes", sizes), ("medoid_index", medoid)):
        if arr.shape[0] != k:
            raise ValueError(f"{name} has {arr.shape[0]} entries for {k} centroids")
    quantile = float(np.asarray(d["quantile"]).reshape(-1)[0])
    return ClusterModel(centroids=centroids, thresholds=np.maximum(thresholds, THRESHOLD_FLOOR).astype(np.float32),
                        sizes=sizes, quantile=quantile, medoid_index=medoid)
