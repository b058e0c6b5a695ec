"""Clusters, thresholds and calibrated outlier scores on synthetic blobs with known outliers.

Blobs are Gaussian clouds around random unit centres in 32-d, projected back onto the sphere;
injected outliers are random unit directions, nearly orthogonal to every centre in 32-d."""

from __future__ import annotations

import numpy as np
import pytest

from plugin.detect.calibration import weighted_quantile
from plugin.detect.kmeans import (
    fit_clusters,
    from_arrays,
    to_arrays,
    weighted_silhouette,
)
from plugin.detect.outliers import CentroidScorer, CombinedScorer, KnnScorer, Scored, knn_search

DIM = 32
SPREADS = (0.02, 0.04, 0.06, 0.08)  # per-dimension noise: clusters of clearly different spread


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(n_per: int, seed: int, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, true blob label, centres)."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = unit(rng.normal(size=(len(SPREADS), DIM)))
    xs, ys = [], []
    for i, s in enumerate(SPREADS):
        xs.append(unit(centres[i] + rng.normal(scale=s, size=(n_per, DIM))))
        ys.append(np.full(n_per, i))
    return np.concatenate(xs), np.concatenate(ys), centres


def outliers(n: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(n, DIM)))


@pytest.fixture(scope="module")
def data():
    base, base_y, centres = blobs(500, seed=1)
    test_in, test_y, _ = blobs(250, seed=2, centres=centres)
    out = outliers(20, seed=3)
    model = fit_clusters(base, k=4, seed=0)
    return dict(base=base, base_y=base_y, test_in=test_in, test_y=test_y, out=out, model=model)


def check_scored(s: Scored, n: int) -> None:
    assert len(s) == n and len(s.detail) == n
    assert s.score.dtype == np.float64 and np.all(np.isfinite(s.score))
    assert np.array_equal(s.is_outlier, s.score >= 1.0)


def test_centroid_scorer_flags_injected_outliers(data):
    scorer = CentroidScorer(data["model"])
    s_out = scorer.score(data["out"])
    s_in = scorer.score(data["test_in"])
    check_scored(s_out, 20)
    check_scored(s_in, 1000)
    assert np.all(s_out.score >= 1.0)
    assert s_in.is_outlier.mean() <= 0.03
    d = s_in.detail[0]
    assert set(d) >= {"distance", "threshold", "cluster_size", "cluster"}
    assert d["threshold"] == pytest.approx(float(data["model"].thresholds[d["cluster"]]))


def test_per_cluster_thresholds_differ_but_mean_the_same_quantile(data):
    model, base = data["model"], data["base"]
    assert model.k == 4 and sorted(model.sizes.tolist()) == [500] * 4
    assert np.allclose(np.linalg.norm(model.centroids, axis=1), 1.0, atol=1e-5)
    # map each fitted cluster to the true blob it holds
    s_base = CentroidScorer(model).score(base)
    blob_of = {c: int(np.bincount(data["base_y"][s_base.cluster == c]).argmax()) for c in range(4)}
    thr_by_blob = {blob_of[c]: float(model.thresholds[c]) for c in range(4)}
    assert thr_by_blob[3] > 4 * thr_by_blob[0]  # spread 0.08 vs 0.02
    assert list(np.argsort([thr_by_blob[b] for b in range(4)])) == [0, 1, 2, 3]
    # score 1.0 is the 0.99 quantile in every cluster: ~1% of each cluster's baseline reaches it,
    # and a fresh draw from the same blobs gives a similarly small share in every cluster
    s_test = CentroidScorer(model).score(data["test_in"])
    for c in range(4):
        frac_base = s_base.is_outlier[s_base.cluster == c].mean()
        assert 0.005 <= frac_base <= 0.02
        assert s_test.is_outlier[s_test.cluster == c].mean() <= 0.05


def test_weighted_quantile_definition():
    v = np.array([0.3, 0.1, 0.2])
    assert weighted_quantile(v, None, 0.5) == pytest.approx(0.2)
    assert weighted_quantile(v, np.array([98, 1, 1]), 0.5) == pytest.approx(0.3)
    assert weighted_quantile(v, np.array([0, 5, 1]), 0.99) == pytest.approx(0.2)  # zero weight ignored
    rng = np.random.default_rng(0)
    vals, w = rng.random(300), rng.integers(1, 20, 300)
    for q in (0.5, 0.9, 0.99):
        assert weighted_quantile(vals, w, q) == pytest.approx(
            float(np.quantile(vals, q, weights=w, method="inverted_cdf")))


def test_weights_act_as_event_counts():
    x, _, _ = blobs(120, seed=5)
    x = x[:120]  # one blob, k=1: centroid and threshold are exact weighted statistics
    w = np.random.default_rng(6).integers(1, 8, x.shape[0])
    weighted = fit_clusters(x, w, k=1)
    repeated = fit_clusters(np.repeat(x, w, axis=0), k=1)
    assert np.allclose(weighted.thresholds, repeated.thresholds, atol=1e-6)
    assert weighted.sizes[0] == w.sum()
    # up-weighting the 10% of members farthest from the centre (x50) moves the weighted median
    # into them: above the unweighted 0.9 quantile
    d = 1.0 - x @ weighted.centroids[0]
    heavy = np.where(d >= np.quantile(d, 0.9), 50, 1)
    assert fit_clusters(x, heavy, k=1, quantile=0.5).thresholds[0] > fit_clusters(x, k=1, quantile=0.9).thresholds[0]


def test_small_clusters_fall_back_to_global_quantile():
    x, _, _ = blobs(200, seed=7)
    tiny = unit(np.random.default_rng(8).normal(size=(1, DIM)) + np.zeros((5, DIM))
                + np.random.default_rng(9).normal(scale=0.3, size=(5, DIM)))
    model = fit_clusters(np.concatenate([x, tiny]), k=5, seed=0)
    small = np.flatnonzero(model.sizes < 20)
    assert small.size == 1
    big = np.flatnonzero(model.sizes >= 20)
    # the fallback equals the global 0.99 quantile, which no single big cluster's quantile has to match
    _, dist = CentroidScorer(model).raw(np.concatenate([x, tiny]))[:2]
    assert model.thresholds[small[0]] == pytest.approx(weighted_quantile(dist, None, 0.99), rel=1e-5)
    assert not np.any(np.isclose(model.thresholds[big], model.thresholds[small[0]]))


def test_silhouette_picks_four_on_four_blobs():
    x, _, _ = blobs(150, seed=11)
    model = fit_clusters(x, k=None, k_range=(2, 12), seed=0)
    assert model.k == 4
    # a sample smaller than the data still finds it
    assert fit_clusters(x, k=None, k_range=(2, 12), seed=0, sample=300).k == 4


def test_weighted_silhouette_matches_sklearn():
    from sklearn.metrics import silhouette_score

    x, y, _ = blobs(60, seed=12)
    labels = [y, np.arange(x.shape[0]) % 3]
    ours = weighted_silhouette(x, labels, chunk=50)
    for lab, val in zip(labels, ours):
        assert val == pytest.approx(silhouette_score(x, lab, metric="cosine"), abs=1e-4)


@pytest.mark.parametrize("case", ["identical", "fewer_than_k", "zeros", "single", "some_zeros"])
def test_degenerate_inputs_do_not_raise(case):
    rng = np.random.default_rng(13)
    v = unit(rng.normal(size=(3, DIM)))
    x = {
        "identical": np.repeat(v[:1], 50, axis=0),
        "fewer_than_k": np.repeat(v, 10, axis=0),
        "zeros": np.zeros((10, DIM), dtype=np.float32),
        "single": v[:1],
        "some_zeros": np.concatenate([v, np.zeros((2, DIM), dtype=np.float32)]),
    }[case]
    for k in (None, 8):
        model = fit_clusters(x, k=k)
        assert 1 <= model.k <= 8 and np.all(model.thresholds > 0)
        assert np.all(np.isfinite(model.centroids))
        queries = np.concatenate([x[:2], v, np.zeros((1, DIM), dtype=np.float32)])
        for scorer in (CentroidScorer(model), KnnScorer(x, clusters=model),
                       CombinedScorer(KnnScorer(x, clusters=model))):
            check_scored(scorer.score(queries), queries.shape[0])
    if case == "identical":
        model = fit_clusters(x, k=8)
        assert model.k == 1 and model.sizes[0] == 50
        s = KnnScorer(x).score(x[:1])
        assert s.score[0] == 0.0 and not s.is_outlier[0]
        assert KnnScorer(x).score(v[1:2]).is_outlier[0]
    if case == "fewer_than_k":
        assert fit_clusters(x, k=8).k == 3


def test_empty_input_raises_clearly():
    with pytest.raises(ValueError):
        fit_clusters(np.zeros((0, DIM), dtype=np.float32))
    with pytest.raises(ValueError):
        KnnScorer(np.zeros((0, DIM), dtype=np.float32))


def test_empty_batch_scores_to_empty(data):
    empty = np.zeros((0, DIM), dtype=np.float32)
    for scorer in (CentroidScorer(data["model"]), KnnScorer(data["base"], clusters=data["model"])):
        check_scored(scorer.score(empty), 0)


def test_arrays_round_trip(data, tmp_path):
    model = data["model"]
    arrays = to_arrays(model)
    back = from_arrays(arrays)
    for name in ("centroids", "thresholds", "sizes", "medoid_index"):
        assert np.array_equal(getattr(back, name), getattr(model, name))
        assert getattr(back, name).dtype == getattr(model, name).dtype
    assert back.quantile == model.quantile
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "clusters.safetensors"
    st.save_file(arrays, str(path))
    again = from_arrays(st.load_file(str(path)))
    assert np.array_equal(again.centroids, model.centroids) and again.quantile == model.quantile
    with pytest.raises(ValueError):
        from_arrays({**arrays, "thresholds": arrays["thresholds"][:2]})


def test_medoids_are_members_of_their_cluster(data):
    model, base = data["model"], data["base"]
    cluster = CentroidScorer(model).score(base).cluster
    for c, m in enumerate(model.medoid_index):
        assert m >= 0 and cluster[m] == c
        members = base[cluster == c]
        assert base[m] @ model.centroids[c] == pytest.approx(float((members @ model.centroids[c]).max()))


def test_knn_scorer_ranks_injected_outliers_first(data):
    base, w = data["base"], np.random.default_rng(14).integers(1, 5, data["base"].shape[0])
    scorer = KnnScorer(base, w, k=1, clusters=data["model"])
    assert scorer.calibration == "holdout" and scorer.holdout_index.size == 400
    queries = np.concatenate([data["test_in"], data["out"]])
    s = scorer.score(queries)
    check_scored(s, queries.shape[0])
    top = np.argsort(-s.score, kind="stable")[:20]
    assert set(top.tolist()) == set(range(1000, 1020))
    assert np.all(s.score[1000:] >= 1.0)
    assert s.is_outlier[:1000].mean() <= 0.03
    d = s.detail[0]
    assert {"knn_distance", "threshold", "nearest_index", "cluster", "centroid_distance"} <= set(d)
    nn = d["nearest_index"]
    assert d["knn_distance"] == pytest.approx(1.0 - float(base[nn] @ queries[0]), abs=1e-5)
    # an exact baseline text scores 0
    assert scorer.score(base[:3]).score.max() == pytest.approx(0.0, abs=1e-5)


def test_knn_search_kth_neighbour():
    rng = np.random.default_rng(15)
    index, q = unit(rng.normal(size=(200, DIM))), unit(rng.normal(size=(30, DIM)))
    sims = q @ index.T
    for k in (1, 3):
        dist, nearest = knn_search(q, index, k)
        assert np.allclose(dist, 1.0 - np.sort(sims, axis=1)[:, -k], atol=1e-5)
        assert np.array_equal(nearest, sims.argmax(axis=1))
        # the bfloat16 shortlist + exact float32 rerank (used for large searches) stays within
        # bfloat16 rounding of the exact answer and never reports a shorter distance than exists
        fast, _ = knn_search(q, index, k, exact=False)
        assert np.all(fast >= dist - 1e-6) and np.all(fast - dist <= 2e-3)


def test_combined_scorer(data):
    knn = KnnScorer(data["base"], clusters=data["model"])
    for how in ("mean", "max"):
        scorer = CombinedScorer(knn, how=how)
        s = scorer.score(np.concatenate([data["test_in"], data["out"]]))
        check_scored(s, 1020)
        assert np.all(s.score[1000:] >= 1.0)
        assert s.is_outlier[:1000].mean() <= 0.03
        assert {"knn_score", "centroid_score", "rarity", "cluster"} <= set(s.detail[0])


def test_deterministic_for_a_seed(data):
    x = data["base"]
    a = fit_clusters(x, k=None, k_range=(2, 8), seed=3)
    b = fit_clusters(x, k=None, k_range=(2, 8), seed=3)
    for name in ("centroids", "thresholds", "sizes", "medoid_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    ka, kb = KnnScorer(x, seed=3), KnnScorer(x, seed=3)
    assert ka.threshold == kb.threshold
    assert np.array_equal(ka.score(data["out"]).score, kb.score(data["out"]).score)
