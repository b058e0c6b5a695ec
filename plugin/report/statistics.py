"""The numbers of the comparison report, computed from rows the store returned.

Why these choices:

* Statistics are over *events*, not distinct texts: a text that occurs 10,000 times matters
  10,000 times to an analyst, and pairs of events sharing a text (cosine 1 by construction) are
  part of what a model sees. Vectors are stored once per text, so each sampled event takes its
  text's vector.
* Every function here is a pure function of arrays and a seed (no database), so the tests can
  recompute each number with scikit-learn / scipy on the same rows.
* KMeans and the silhouette run single-threaded on a uniform head of the sample, which keeps the
  report within about a minute on 100k events x 2 models on two cores.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from plugin.store.reports import AssignmentPairs, ModelInfo, SampledEvents

__all__ = [
    "HIGH_COSINE",
    "KMEANS_EVENTS",
    "SCREE_COMPONENTS",
    "SILHOUETTE_EVENTS",
    "EventSample",
    "agreement_numbers",
    "cosine_stats",
    "pair_cosines",
    "pca_summary",
    "sample_pairs",
    "silhouette_curve",
    "unit_sample",
]

#: Events the KMeans fits take from the head of the sample (a uniform subsample of it).
KMEANS_EVENTS = 10_000
#: Points ``silhouette_score`` averages over (it is quadratic in them).
SILHOUETTE_EVENTS = 3_000
#: Components in the scree plot and the summary's ``explained_variance_ratio``.
SCREE_COMPONENTS = 20
#: The "near duplicate" cosine of the study.
HIGH_COSINE = 0.9


# -- the event sample -------------------------------------------------------------------------
@dataclass
class EventSample:
    """Events drawn uniformly (fixed seed) from those whose text has a vector of every model in
    ``models``, with one L2-normalized vector row per event and model."""

    models: tuple[str, ...]
    keys: list[str]
    hashes: list[str]
    population: int  # events eligible for the sample
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (n, dim) float32

    def __len__(self) -> int:
        return len(self.keys)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def unit_sample(models: Sequence[ModelInfo], sampled: SampledEvents) -> EventSample:
    """The sampled events with each text's vector L2-normalized (once per text), one row per
    event: cosines become dot products and Euclidean KMeans optimizes the cosine objective."""
    sample = EventSample(tuple(m.name for m in models), sampled.keys, sampled.hashes,
                         sampled.population)
    for m in models:
        sample.vectors[m.name] = _unit(sampled.vectors[m.name])[sampled.text_rows]
    return sample


def sample_pairs(n_events: int, pairs: int, seed: int) -> np.ndarray:
    """(pairs, 2) indices of two *different* events of a sample, uniform, fixed seed.

    Pairs of events from a uniform event sample are uniform event pairs; two events may still
    share a canonical text (and then have cosine 1), as they do in the stream.
    """
    if n_events < 2 or pairs <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n_events, size=pairs)
    j = rng.integers(0, n_events - 1, size=pairs)
    j = j + (j >= i)  # skip i itself: uniform over the other events
    return np.stack([i, j], axis=1).astype(np.int64)


# -- (a) (b) (c): geometry of each model's vectors -----------------------------------------------
def pair_cosines(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine of each pair (the rows are unit vectors)."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.float64)
    a, b = vectors[pairs[:, 0]], vectors[pairs[:, 1]]
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))


def cosine_stats(cos: np.ndarray) -> dict:
    """mean, median, std, p5, p95 and the share of pairs above :data:`HIGH_COSINE`."""
    return {
        "pairs": int(cos.size),
        "mean": float(np.mean(cos)),
        "median": float(np.median(cos)),
        "std": float(np.std(cos)),
        "p5": float(np.quantile(cos, 0.05)),
        "p95": float(np.quantile(cos, 0.95)),
        "share_above_0_9": float(np.mean(cos > HIGH_COSINE)),
    }


def silhouette_curve(x: np.ndarray, k_range: Sequence[int], seed: int,
                     sample_size: int = SILHOUETTE_EVENTS) -> dict:
    """Silhouette (cosine) of MiniBatchKMeans(k, seed) on ``x`` for each k; best k.

    ``x`` are unit vectors, so Euclidean KMeans optimizes the cosine objective, as in
    :mod:`plugin.detect.kmeans`. A k the data cannot support (k >= points, or the fit found
    fewer distinct clusters than asked) has silhouette None.
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    # Single-threaded, as in plugin.detect.kmeans: at these sizes OpenMP start-up and spin-waiting
    # dominate, and on a busy two-core host a 10k x 128 fit took 2-4 s threaded vs 0.1 s without.
    ks, scores = [], []
    for k in k_range:
        ks.append(int(k))
        if k < 2 or k >= len(x):
            scores.append(None)
            continue
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore")  # fewer distinct points than k: judged below
            labels = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3,
                                     batch_size=2048).fit_predict(x)
        if len(np.unique(labels)) < k:
            scores.append(None)
            continue
        try:
            with threadpool_limits(limits=1):
                s = silhouette_score(x, labels, metric="cosine",
                                     sample_size=min(sample_size, len(x)), random_state=seed)
        except ValueError:  # the silhouette subsample drew a single cluster
            s = None
        scores.append(None if s is None or not math.isfinite(s) else float(s))
    valid = [(s, k) for k, s in zip(ks, scores) if s is not None]
    best = max(valid, key=lambda t: (t[0], -t[1])) if valid else None
    return {"events": len(x), "silhouette_events": int(min(sample_size, len(x))),
            "k": ks, "silhouette": scores,
            "best_k": best[1] if best else None, "best_silhouette": best[0] if best else None}


def pca_summary(x: np.ndarray, seed: int) -> dict:
    """PCA of the sample: scree (first components), cumulative curve, components for 90%/95%."""
    from sklearn.decomposition import PCA

    n_comp = int(min(x.shape))
    pca = PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit(x)
    ratio = pca.explained_variance_ratio_.astype(np.float64)
    cum = np.cumsum(ratio)

    def reach(share: float) -> int | None:
        hit = np.flatnonzero(cum >= share - 1e-9)
        return int(hit[0] + 1) if hit.size else None

    return {"events": len(x), "dim": int(x.shape[1]), "components": n_comp,
            "explained_variance_ratio": ratio[:SCREE_COMPONENTS].tolist(),
            "cumulative": cum.tolist(),
            "components_90": reach(0.90), "components_95": reach(0.95)}


# -- (d): agreement between two models' assignments ---------------------------------------------
def agreement_numbers(pairs: AssignmentPairs, primary: str,
                      shadow: str) -> tuple[dict, dict[str, np.ndarray]]:
    """ARI of clusters, Cohen's kappa of outlier flags, Spearman of scores, over the events both
    models assigned (at least one). Returns (summary, arrays for the scatter plot); a measure
    that is undefined on these events (constant inputs) is None."""
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score, cohen_kappa_score

    (ca, cb), (oa, ob), (sa, sb) = pairs.clusters, pairs.is_outlier, pairs.scores
    n = len(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: undefined, reported as None
        ari = float(adjusted_rand_score(ca, cb))
        kappa = float(cohen_kappa_score(oa, ob)) if (oa.any() or ob.any()) else float("nan")
        rho = float(spearmanr(sa, sb).statistic) if n > 2 else float("nan")
    models = (primary, shadow)
    out = {
        "primary": primary, "shadow": shadow, "events": int(n),
        "assigned_events": {m: pairs.assigned[m] for m in models},
        "fit_versions": pairs.fit_versions,
        "adjusted_rand_index": ari,
        "cohen_kappa": kappa if math.isfinite(kappa) else None,
        "spearman": rho if math.isfinite(rho) else None,
        "clusters": {primary: len(np.unique(ca)), shadow: len(np.unique(cb))},
        "outliers_all_assigned": pairs.outliers,
        "outliers": {primary: int(oa.sum()), shadow: int(ob.sum())},
        "both_outlier": int((oa & ob).sum()),
        "primary_only_outlier": int((oa & ~ob).sum()),
        "shadow_only_outlier": int((~oa & ob).sum()),
        "neither_outlier": int((~oa & ~ob).sum()),
    }
    return out, {"primary": sa, "shadow": sb, "primary_outlier": oa, "shadow_outlier": ob}
