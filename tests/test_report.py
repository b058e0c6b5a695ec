"""`sysmon-blt report`: the BLT-vs-shadow comparison, checked against direct computations.

The database is built with the Store API from vectors the test controls (three well separated
clusters per model, the shadow noisier and narrower), so every number in summary.json can be
recomputed here from the same rows with scikit-learn / scipy.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy.stats import spearmanr
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, cohen_kappa_score, silhouette_score

from plugin.cli import main
from plugin.detect.metrics import detection_metrics
from plugin.errors import UsageError
from plugin.report.compare import build_report, sample_events
from plugin.report.statistics import sample_pairs, silhouette_curve
from plugin.store import VectorRows, open_store, utcnow

N_TEXTS = 60
N_EVENTS = 480
DIMS = {"blt": 16, "linformer": 8}
VERSIONS = {"blt": "b1", "linformer": "l1"}
K_RANGE = range(2, 7)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class World:
    """What the test database holds, kept on the Python side for direct computations."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.texts = [f"cluster {i % 3} text {i}" for i in range(N_TEXTS)]
        self.hashes = [hashlib.sha256(t.encode()).hexdigest() for t in self.texts]
        self.text_cluster = np.arange(N_TEXTS) % 3
        # events: each picks a text; frequent texts repeat, as in real logs
        self.event_text = rng.integers(0, N_TEXTS, size=N_EVENTS)
        self.keys = [f"{i:032x}" for i in range(N_EVENTS)]
        self.vectors: dict[str, np.ndarray] = {}
        for m, d in DIMS.items():
            centres = np.eye(d)[:3] * 4.0
            noise = 0.4 if m == "blt" else 1.5
            self.vectors[m] = _unit(centres[self.text_cluster] + rng.normal(0, noise, (N_TEXTS, d))
                                    ).astype(np.float32)
        self.scores = {"blt": rng.gamma(1.5, 0.3, N_EVENTS),
                       "linformer": rng.gamma(1.5, 0.3, N_EVENTS)}
        self.attack = np.zeros(N_EVENTS, dtype=bool)
        self.attack[rng.choice(N_EVENTS, 30, replace=False)] = True
        self.scores["blt"][self.attack] += 1.0  # BLT finds the attack better than the shadow
        self.scores["linformer"][self.attack] += 0.3
        self.scores["blt"][:5] = 0.0  # exact baseline texts
        # shadow clusters: the true ones, with 15% of events moved
        moved = rng.random(N_EVENTS) < 0.15
        self.clusters = {"blt": self.text_cluster[self.event_text].copy(),
                         "linformer": np.where(moved, rng.integers(0, 3, N_EVENTS),
                                               (self.text_cluster[self.event_text] + 1) % 3)}
        # the shadow scored a subset only (it samples traffic)
        self.assigned = {"blt": np.ones(N_EVENTS, dtype=bool),
                         "linformer": rng.random(N_EVENTS) < 0.8}

    def event_vectors(self, model: str, keys: list[str]) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.keys)}
        return self.vectors[model][self.event_text[[index[k] for k in keys]]]


def make_db(path: Path, world: World, models=("blt", "linformer"), labels: bool = True,
            runs: bool = True, evals: bool = True, assignments: bool = True) -> Path:
    store = open_store(path)
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    now = utcnow()
    events = {
        "event_key": world.keys, "source": ["test.jsonl"] * N_EVENTS,
        "position": list(range(N_EVENTS)), "event_id": [1] * N_EVENTS,
        "computer": ["WS01"] * N_EVENTS, "user_name": ["alice"] * N_EVENTS,
        "ts": [t0 + timedelta(seconds=i) for i in range(N_EVENTS)],
        "record_id": list(range(N_EVENTS)), "channel": ["Microsoft-Windows-Sysmon/Operational"] * N_EVENTS,
        "shape": ["flat"] * N_EVENTS, "normalized": [world.texts[t] for t in world.event_text],
        "text_hash": [world.hashes[t] for t in world.event_text],
        "fields": ["{}"] * N_EVENTS, "raw": ["{}"] * N_EVENTS, "imported_at": [now] * N_EVENTS,
    }
    vectors = []
    for m in models:
        store.register_model(m, VERSIONS[m], DIMS[m], None)
        vectors.append(VectorRows(m, VERSIONS[m], world.hashes, world.vectors[m]))
    rows = []
    if assignments:
        for m in models:
            for i in np.flatnonzero(world.assigned[m]):
                s = float(world.scores[m][i])
                rows.append({"event_key": world.keys[i], "model": m, "version": 1,
                             "cluster": int(world.clusters[m][i]), "distance": s / 10, "score": s,
                             "is_outlier": s >= 1.0, "detail": "{}", "explanation": "{}"})
    store.write_batch(events, [], vectors=vectors, assignments=rows)
    if labels:
        store.con.executemany("INSERT INTO labels VALUES (?, ?, ?)",
                              [[k, bool(a), "test"] for k, a in zip(world.keys, world.attack)])
    if runs:
        for day, m, tps in ((1, "blt", 900.0), (2, "blt", 1000.0), (2, "linformer", 2500.0)):
            store.con.execute(
                "INSERT INTO model_runs VALUES (?, 'import', ?, ?, ?, ?, ?, ?, ?, ?)",
                [t0 + timedelta(days=day), m, VERSIONS[m], 480, 60, 60 / tps, tps, 2.0, 240.0])
    if evals:
        store.con.execute("INSERT INTO evaluations VALUES (?, ?, ?)", [
            now, orjson.dumps({"baseline": ["a"], "test": ["b"], "attack_seed": "evil"}).decode(),
            orjson.dumps({"scorers": {"blt-knn": {"roc_auc": 0.91, "average_precision": 0.5},
                                      "tfidf-1nn": {"roc_auc": 0.8, "average_precision": 0.3}}}
                         ).decode()])
    store.close()
    return path


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def full(tmp_path_factory, world):
    """The two-model database and its report (built once: the report takes a few seconds)."""
    tmp = tmp_path_factory.mktemp("report")
    db = make_db(tmp / "r.duckdb", world)
    store = open_store(db, read_only=True)
    try:
        summary = build_report(store, tmp / "out", sample=20000, pairs=3000, k_range=K_RANGE, seed=3)
    finally:
        store.close()
    return db, tmp / "out", summary


def test_files_and_html_are_self_contained(full):
    _, out, summary = full
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 5, pngs  # cosine, silhouette, 2x PCA, scores, ROC
    assert json.loads((out / "summary.json").read_text()) == summary
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(summary["figures"]) == len(pngs)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    for text in summary["interpretation"].values():
        assert text[:40].replace("'", "&#x27;") in page
    assert "BLT" in page and "Linformer" in page and "Not available" not in page


def test_summary_describes_what_was_compared(full):
    db, _, s = full
    assert s["db"] == str(db) and s["events"] == N_EVENTS
    assert s["primary"] == "blt" and s["shadows"] == ["linformer"] and s["absent"] == {}
    assert s["models"]["blt"]["version"] == "b1" and s["models"]["linformer"]["dim"] == 8
    assert s["models"]["blt"]["texts"] == N_TEXTS and s["models"]["blt"]["events"] == N_EVENTS
    assert s["sample"]["shared"] and s["sample"]["events"] == {"blt": N_EVENTS, "linformer": N_EVENTS}
    assert s["missing"] == {}
    for key in ("cosine", "silhouette", "pca", "agreement", "detection", "evaluations", "throughput"):
        assert s[key] is not None, key


def test_cosine_matches_direct_computation_on_the_same_pairs(full, world):
    db, _, s = full
    store = open_store(db, read_only=True)
    try:
        infos = list(store.stored_models().values())
        smp = sample_events(store, infos, 20000, 3)
    finally:
        store.close()
    assert sorted(smp.keys) == sorted(world.keys)  # sample >= events: every event, once
    pairs = sample_pairs(len(smp), 3000, 3)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    for m in DIMS:
        v = world.event_vectors(m, smp.keys)
        cos = np.sum(v[pairs[:, 0]] * v[pairs[:, 1]], axis=1)
        c = s["cosine"][m]
        assert c["pairs"] == 3000
        assert c["mean"] == pytest.approx(cos.mean(), abs=1e-6)
        assert c["median"] == pytest.approx(np.median(cos), abs=1e-6)
        assert c["p95"] == pytest.approx(np.quantile(cos, 0.95), abs=1e-6)
        assert c["share_above_0_9"] == pytest.approx(np.mean(cos > 0.9))
    # BLT's tight clusters: more near-duplicates than the noisy shadow, and the text says so
    assert s["cosine"]["blt"]["share_above_0_9"] > s["cosine"]["linformer"]["share_above_0_9"]
    assert "0.9" in s["interpretation"]["cosine"]


def test_silhouette_and_pca_match_sklearn(full, world):
    _, _, s = full
    for m in DIMS:
        x = world.vectors[m][world.event_text]  # every event: PCA does not depend on order
        ratio = PCA(svd_solver="full").fit(x).explained_variance_ratio_
        p = s["pca"][m]
        np.testing.assert_allclose(p["explained_variance_ratio"], ratio[:20], atol=1e-5)
        cum = np.cumsum(ratio)
        assert p["components_90"] == int(np.argmax(cum >= 0.9) + 1)
        assert p["components_95"] == int(np.argmax(cum >= 0.95) + 1)
        assert s["silhouette"][m]["k"] == list(K_RANGE)
    assert s["silhouette"]["blt"]["best_k"] == 3  # three well separated clusters
    assert s["silhouette"]["blt"]["best_silhouette"] > s["silhouette"]["linformer"]["best_silhouette"]


def test_silhouette_curve_is_sklearn_on_the_same_rows(world):
    x = world.vectors["blt"][world.event_text].astype(np.float32)
    res = silhouette_curve(x, [3], seed=5, sample_size=200)
    labels = MiniBatchKMeans(n_clusters=3, random_state=5, n_init=3, batch_size=2048).fit_predict(x)
    direct = silhouette_score(x, labels, metric="cosine", sample_size=200, random_state=5)
    assert res["silhouette"] == [pytest.approx(direct)] and res["best_k"] == 3


def test_agreement_matches_sklearn_and_scipy(full, world):
    _, _, s = full
    a = s["agreement"]["linformer"]
    both = world.assigned["blt"] & world.assigned["linformer"]
    assert a["events"] == int(both.sum())
    assert a["adjusted_rand_index"] == pytest.approx(
        adjusted_rand_score(world.clusters["blt"][both], world.clusters["linformer"][both]))
    oa, ob = world.scores["blt"][both] >= 1, world.scores["linformer"][both] >= 1
    assert a["cohen_kappa"] == pytest.approx(cohen_kappa_score(oa, ob))
    assert a["spearman"] == pytest.approx(
        spearmanr(world.scores["blt"][both], world.scores["linformer"][both]).statistic)
    assert a["outliers"] == {"blt": int(oa.sum()), "linformer": int(ob.sum())}
    assert a["both_outlier"] == int((oa & ob).sum())
    assert a["primary_only_outlier"] + a["shadow_only_outlier"] + a["both_outlier"] + \
        a["neither_outlier"] == a["events"]
    assert a["assigned_events"] == {m: int(world.assigned[m].sum()) for m in DIMS}
    assert "scores:linformer" in s["figures"]


def test_detection_throughput_and_evaluations(full, world):
    _, out, s = full
    for m in DIMS:
        got = world.assigned[m]
        sc = world.scores[m][got]
        assert s["detection"][m] == pytest.approx(
            detection_metrics(sc, world.attack[got], sc >= 1.0), nan_ok=True)
    assert s["detection"]["blt"]["roc_auc"] > s["detection"]["linformer"]["roc_auc"]
    latest = s["throughput"]["latest"]
    assert latest["blt"]["texts_per_second"] == 1000.0 and len(s["throughput"]["runs"]) == 3
    assert latest["linformer"]["texts_per_second"] == 2500.0
    assert "2.5x" in s["interpretation"]["throughput"]
    assert s["evaluations"][0]["results"]["scorers"]["blt-knn"]["roc_auc"] == 0.91
    page = (out / "report.html").read_text()
    assert "tfidf-1nn" in page and "evil" in page


def test_one_model_without_labels_or_runs(tmp_path, world):
    db = make_db(tmp_path / "one.duckdb", world, models=("blt",), labels=False, runs=False,
                 evals=False)
    store = open_store(db, read_only=True)
    try:
        s = build_report(store, tmp_path / "out", pairs=500, k_range=range(2, 5))
    finally:
        store.close()
    assert list(s["models"]) == ["blt"] and "linformer" in s["absent"]
    assert s["agreement"] is None and "agreement" in s["missing"]
    for key in ("detection", "evaluations", "throughput"):
        assert s[key] is None and s["missing"][key]
    assert s["cosine"]["blt"]["pairs"] == 500 and s["pca"]["blt"]["components_90"] >= 1
    page = (tmp_path / "out" / "report.html").read_text()
    assert "absent" in page and page.count("Not available") >= 4


def test_shadow_without_assignments_and_an_old_schema(tmp_path, world):
    db = make_db(tmp_path / "old.duckdb", world, assignments=False, labels=False, runs=False,
                 evals=False)
    store = open_store(db)
    store.con.execute("DROP TABLE labels; DROP TABLE model_runs; DROP TABLE evaluations")
    store.close()
    store = open_store(db, read_only=True)
    try:
        s = build_report(store, tmp_path / "out", pairs=200, k_range=range(2, 4))
    finally:
        store.close()
    assert s["agreement"] is None and "no assignments" in s["missing"]["agreement:linformer"]
    assert "migration 4" in s["missing"]["throughput"]
    assert s["cosine"] and s["silhouette"] and s["pca"]


def test_no_vectors_is_a_usage_error(tmp_path):
    open_store(tmp_path / "empty.duckdb").close()
    store = open_store(tmp_path / "empty.duckdb", read_only=True)
    try:
        with pytest.raises(UsageError, match="no vectors"):
            build_report(store, tmp_path / "out")
    finally:
        store.close()


def test_cli_report(tmp_path, world, capsys):
    db = make_db(tmp_path / "cli.duckdb", world, labels=False)
    out = tmp_path / "rep"
    assert main(["report", "--db", str(db), "--out", str(out), "--sample", "300", "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "summary.json").read_text())
    assert printed["sample"]["events"]["blt"] == 300 and (out / "report.html").is_file()
    assert main(["report", "--db", str(tmp_path / "nope.duckdb"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    open_store(tmp_path / "empty.duckdb").close()
    assert main(["report", "--db", str(tmp_path / "empty.duckdb"), "--out", str(out)]) == 2
    assert "no vectors" in capsys.readouterr().err


def test_models_without_common_events_are_sampled_apart(tmp_path, world):
    db = make_db(tmp_path / "apart.duckdb", world, labels=False, runs=False, evals=False)
    store = open_store(db)
    half = len(world.hashes) // 2
    for model, hashes in (("blt", world.hashes[half:]), ("linformer", world.hashes[:half])):
        store.con.executemany("DELETE FROM text_vectors WHERE model = ? AND text_hash = ?",
                              [[model, h] for h in hashes])
    store.close()
    store = open_store(db, read_only=True)
    try:
        s = build_report(store, tmp_path / "out", pairs=300, k_range=range(2, 4))
    finally:
        store.close()
    assert not s["sample"]["shared"] and "same_sample" in s["missing"]
    in_first = np.isin(world.event_text, np.arange(half))
    assert s["sample"]["population"] == {"blt": int(in_first.sum()), "linformer": int((~in_first).sum())}
    assert set(s["cosine"]) == {"blt", "linformer"} and s["sample"]["pairs_same_text"] is None
    assert "sampled separately" in (tmp_path / "out" / "report.html").read_text()
