"""`sysmon-blt report`: the primary (BLT) and the shadow (Linformer) embeddings, side by side.

It reproduces, on the events of one database, the comparison a published study made between
BLT and BPE+Linformer embeddings of Sysmon messages: (a) how spread out the vectors of random
event pairs are, (b) how well KMeans separates them for k = 2..15, (c) how many principal
components carry their variance, then what only a running system knows: (d) whether the two
models agree on clusters, outlier flags and scores, (e) how well each detects labelled attacks,
(f) how fast each embedded during imports.

Why these choices:

* Statistics are over *events*, not distinct texts: a text that occurs 10,000 times matters
  10,000 times to an analyst, and pairs of events sharing a text (cosine 1 by construction) are
  part of what a model sees. Vectors are stored once per text, so a sample of events joins its
  texts' vectors.
* Both models are judged on the same events and the same pairs: the sample is drawn from events
  whose text has a vector of every compared model. Only when no event has all of them (the
  shadow embedded a disjoint sample) is each model sampled on its own, and the report says so.
* The sample is a deterministic function of the seed and the event keys (ordered by a hash of
  key and seed inside DuckDB), independent of scan order and thread count, and it scales: the
  database never ships every event key to Python. Its first rows are themselves a uniform
  subsample, which the costlier steps (KMeans, silhouette) take, so the report stays within
  about a minute on 100k events x 2 models on two cores.
* A section whose data is missing (one model, no assignments, no labels, an old schema) is
  ``None`` in the summary with its reason in ``summary["missing"]``; the report never fails for it.
  Only a database without any vectors is a usage error: there is nothing to compare.
* Every number shown comes from :func:`build_report`'s summary (``summary.json``); the HTML and
  the one-line interpretations are rendered from it, so what a reader sees is what tools read.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from plugin import __version__
from plugin.errors import UsageError
from plugin.report.metrics import detection_metrics
from plugin.store.duckdb import Store, utcnow

log = structlog.get_logger(__name__)

__all__ = [
    "KNOWN_MODELS",
    "EventSample",
    "ModelInfo",
    "agreement",
    "build_report",
    "cosine_stats",
    "display_name",
    "eval_scorers",
    "label_rows",
    "pair_cosines",
    "pca_summary",
    "sample_events",
    "sample_pairs",
    "silhouette_curve",
    "stored_models",
]

#: The models a deployment normally runs: the primary first. Any other model with vectors is
#: compared too; these two are named as absent when missing.
KNOWN_MODELS = ("blt", "linformer")
#: Events the KMeans fits take from the head of the sample (a uniform subsample of it).
KMEANS_EVENTS = 10_000
#: Points ``silhouette_score`` averages over (it is quadratic in them).
SILHOUETTE_EVENTS = 3_000
#: Components in the scree plot and the summary's ``explained_variance_ratio``.
SCREE_COMPONENTS = 20
#: The "near duplicate" cosine of the study.
HIGH_COSINE = 0.9
_NAMES = {"blt": "BLT", "linformer": "Linformer"}


def display_name(model: str) -> str:
    """'BLT', 'Linformer', or the stored name for any other model."""
    return _NAMES.get(model, model)


# -- what is stored ---------------------------------------------------------------------------
@dataclass
class ModelInfo:
    """One model as stored: the version the report uses and how much it covers."""

    name: str
    version: str  # the version compared: the one with the most stored vectors
    versions: list[str]  # every version with vectors, most vectors first
    dim: int
    texts: int  # distinct texts with a vector of `version`
    events: int  # events whose text has one


def _has_table(store: Store, table: str) -> bool:
    """Read-only opens do not migrate, so an older file may lack migration 3 or 4 tables."""
    rows = store.con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchall()
    return bool(rows[0][0])


def stored_models(store: Store) -> dict[str, ModelInfo]:
    """Every model with vectors in ``text_vectors``, primary ('blt') first.

    When a model has vectors of several versions (a rescore in progress, an old model kept),
    the version with the most vectors is compared (ties: the most recent); the others are listed.
    """
    if not _has_table(store, "text_vectors"):
        return {}
    rows = store.con.execute(
        "SELECT model, model_version, count(*) AS n, max(created) AS last FROM text_vectors "
        "GROUP BY model, model_version ORDER BY model, n DESC, last DESC").fetchall()
    by_model: dict[str, list[tuple[str, int]]] = {}
    for model, version, n, _ in rows:
        by_model.setdefault(model, []).append((version, int(n)))
    order = [m for m in KNOWN_MODELS if m in by_model] + sorted(set(by_model) - set(KNOWN_MODELS))
    out: dict[str, ModelInfo] = {}
    for model in order:
        version, texts = by_model[model][0]
        dim_row = store.con.execute(
            "SELECT len(vector) FROM text_vectors WHERE model = ? AND model_version = ? LIMIT 1",
            [model, version]).fetchall()
        events = store.con.execute(
            "SELECT count(*) FROM events e WHERE e.text_hash IN (SELECT text_hash FROM text_vectors "
            "WHERE model = ? AND model_version = ?)", [model, version]).fetchall()[0][0]
        out[model] = ModelInfo(model, version, [v for v, _ in by_model[model]],
                               int(dim_row[0][0]) if dim_row else 0, texts, int(events))
    return out


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


def sample_events(store: Store, models: Sequence[ModelInfo], n: int, seed: int) -> EventSample:
    """Up to ``n`` events with vectors of every given model, in a seeded random order.

    The order is ``hash(event_key || seed)``: deterministic for a seed, independent of how
    DuckDB scans, and any prefix of the result is itself a uniform sample.
    """
    where = " AND ".join(
        "e.text_hash IN (SELECT text_hash FROM text_vectors WHERE model = ? AND model_version = ?)"
        for _ in models)
    params: list[Any] = [p for m in models for p in (m.name, m.version)]
    population = int(store.con.execute(
        f"SELECT count(*) FROM events e WHERE {where}", params).fetchall()[0][0])
    rows = store.con.execute(
        f"SELECT e.event_key, e.text_hash FROM events e WHERE {where} "
        "ORDER BY hash(e.event_key || ?), e.event_key LIMIT ?",
        params + [f"|{seed}", int(n)]).fetchall()
    sample = EventSample(tuple(m.name for m in models), [r[0] for r in rows], [r[1] for r in rows],
                         population)
    distinct = list(dict.fromkeys(sample.hashes))
    for m in models:
        got = store.read_vectors(m.name, m.version, distinct)
        if not sample.keys:
            sample.vectors[m.name] = np.zeros((0, m.dim), dtype=np.float32)
            continue
        mat = np.stack([got[h] for h in distinct]).astype(np.float32)
        index = {h: i for i, h in enumerate(distinct)}
        sample.vectors[m.name] = _unit(mat)[[index[h] for h in sample.hashes]]
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


# -- (d) (e) (f): what the running system recorded ----------------------------------------------
def agreement(store: Store, primary: str, shadow: str) -> tuple[dict | None, dict | None, str | None]:
    """ARI of clusters, Cohen's kappa of outlier flags, Spearman of scores, over the events both
    models assigned. Returns (summary, arrays for the scatter plot, reason when None)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score, cohen_kappa_score

    counts = dict(store.con.execute(
        "SELECT model, count(*) FROM assignments WHERE model IN (?, ?) GROUP BY model",
        [primary, shadow]).fetchall())
    missing = [m for m in (primary, shadow) if not counts.get(m)]
    if missing:
        return None, None, (f"no assignments for {', '.join(map(display_name, missing))}: its "
                            "events were embedded but never scored (run `fit`, then `rescore`)")
    cols = store.con.execute(
        "SELECT coalesce(a.cluster, -1) AS ca, coalesce(b.cluster, -1) AS cb, a.is_outlier AS oa, "
        "b.is_outlier AS ob, a.score AS sa, b.score AS sb FROM assignments a JOIN assignments b "
        "ON a.event_key = b.event_key WHERE a.model = ? AND b.model = ? ORDER BY a.event_key",
        [primary, shadow]).fetchnumpy()
    n = len(cols["ca"])
    if n == 0:
        return None, None, (f"no event has assignments from both {display_name(primary)} and "
                            f"{display_name(shadow)}")
    ca, cb = np.asarray(cols["ca"], np.int64), np.asarray(cols["cb"], np.int64)
    oa, ob = np.asarray(cols["oa"], bool), np.asarray(cols["ob"], bool)
    sa, sb = np.asarray(cols["sa"], np.float64), np.asarray(cols["sb"], np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: undefined, reported as None
        ari = float(adjusted_rand_score(ca, cb))
        kappa = float(cohen_kappa_score(oa, ob)) if (oa.any() or ob.any()) else float("nan")
        rho = float(spearmanr(sa, sb).statistic) if n > 2 else float("nan")
    versions = dict(store.con.execute(
        "SELECT model, list(DISTINCT version ORDER BY version) FROM assignments "
        "WHERE model IN (?, ?) GROUP BY model", [primary, shadow]).fetchall())
    outliers = dict(store.con.execute(
        "SELECT model, count(*) FILTER (WHERE is_outlier) FROM assignments WHERE model IN (?, ?) "
        "GROUP BY model", [primary, shadow]).fetchall())
    out = {
        "primary": primary, "shadow": shadow, "events": int(n),
        "assigned_events": {m: int(counts[m]) for m in (primary, shadow)},
        "fit_versions": {m: [int(v) for v in versions.get(m, [])] for m in (primary, shadow)},
        "adjusted_rand_index": ari,
        "cohen_kappa": kappa if math.isfinite(kappa) else None,
        "spearman": rho if math.isfinite(rho) else None,
        "clusters": {primary: len(np.unique(ca)), shadow: len(np.unique(cb))},
        "outliers_all_assigned": {m: int(outliers.get(m, 0)) for m in (primary, shadow)},
        "outliers": {primary: int(oa.sum()), shadow: int(ob.sum())},
        "both_outlier": int((oa & ob).sum()),
        "primary_only_outlier": int((oa & ~ob).sum()),
        "shadow_only_outlier": int((~oa & ob).sum()),
        "neither_outlier": int((~oa & ~ob).sum()),
    }
    return out, {"primary": sa, "shadow": sb, "primary_outlier": oa, "shadow_outlier": ob}, None


def label_rows(store: Store, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, is_outlier, is_attack) of the labelled events the model assigned."""
    cols = store.con.execute(
        "SELECT a.score, a.is_outlier, l.is_attack FROM labels l JOIN assignments a "
        "ON a.event_key = l.event_key WHERE a.model = ? ORDER BY l.event_key", [model]).fetchnumpy()
    return (np.asarray(cols["score"], np.float64), np.asarray(cols["is_outlier"], bool),
            np.asarray(cols["is_attack"], bool))


def _jsonish(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _evaluations(store: Store) -> list[dict]:
    rows = store.con.execute(
        "SELECT created, spec, results FROM evaluations ORDER BY created").fetchall()
    return [{"created": _iso(c), "spec": _jsonish(s), "results": _jsonish(r)} for c, s, r in rows]


def eval_scorers(results: Any) -> dict[str, dict]:
    """The per-scorer metrics of one stored eval result: `eval --json`'s whole object (with a
    ``scorers`` key) or just its scorer -> metrics mapping."""
    if isinstance(results, dict) and isinstance(results.get("scorers"), dict):
        results = results["scorers"]
    if isinstance(results, dict):
        return {str(k): v for k, v in results.items() if isinstance(v, dict)}
    return {}


def _model_runs(store: Store) -> list[dict]:
    cur = store.con.execute("SELECT * FROM model_runs ORDER BY run_started, model")
    names = [d[0] for d in cur.description]
    return [{k: _iso(v) for k, v in zip(names, row)} for row in cur.fetchall()]


# -- interpretations: one to three sentences from the numbers ------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.995 or x == 1 else f"{100 * x:.2f}%"


def _vs(values: dict[str, Any], fmt) -> str:
    """'0.41 for BLT vs 0.78 for Linformer'."""
    return " vs ".join(f"{fmt(v)} for {display_name(m)}" for m, v in values.items())


def _interpret_cosine(stats: dict[str, dict], same_text_share: float | None) -> str:
    med = {m: s["median"] for m, s in stats.items()}
    high = {m: s["share_above_0_9"] for m, s in stats.items()}
    if len(stats) == 1:
        (m, s), = stats.items()
        text = (f"{display_name(m)}: median pair cosine {s['median']:.2f} (5th to 95th percentile "
                f"{s['p5']:.2f} to {s['p95']:.2f}); {_pct(s['share_above_0_9'])} of random event "
                "pairs are near-duplicates (cosine > 0.9).")
    else:
        lo = min(med, key=med.get)
        others = [m for m in med if m != lo]
        if max(med.values()) - med[lo] < 0.02:
            text = (f"The models place unrelated events about equally far apart: median pair cosine "
                    f"{_vs(med, lambda v: f'{v:.2f}')}.")
        else:
            text = (f"{display_name(lo)} places unrelated events further apart (more room to tell "
                    f"them apart): median pair cosine {_vs(med, lambda v: f'{v:.2f}')}.")
        text += f" Near-duplicate pairs (cosine > 0.9): {_vs(high, _pct)}."
        if all(high[lo] >= 2 * high[m] and high[lo] - high[m] > 0.01 for m in others):
            text += (f" {display_name(lo)}'s similarities are more polarized: tight groups of "
                     "near-identical events, far from everything else.")
    if same_text_share is not None:
        text += (f" {_pct(same_text_share)} of the pairs are two events with the same canonical "
                 f"text (cosine 1{' for every model' if len(stats) > 1 else ''}).")
    return text


def _interpret_silhouette(sil: dict[str, dict]) -> str:
    parts = [f"{display_name(m)} k={s['best_k']} (silhouette {s['best_silhouette']:.2f})"
             for m, s in sil.items() if s["best_k"] is not None]
    if not parts:
        return "No k gave a defined silhouette: the sample has too few distinct vectors."
    text = "Best number of KMeans clusters: " + ", ".join(parts) + "."
    edge = [display_name(m) for m, s in sil.items()
            if s["best_k"] is not None and s["best_k"] == max(s["k"])]
    if edge:
        text += (f" For {' and '.join(edge)} the silhouette still rises at the largest k tried, so "
                 "the events likely form more groups than that.")
    scored = {m: s["best_silhouette"] for m, s in sil.items() if s["best_silhouette"] is not None}
    if len(scored) > 1:
        top = max(scored, key=scored.get)
        text += (f" {display_name(top)}'s events form the most clearly separated groups "
                 "(silhouette 1 = tight, well apart; near 0 = overlapping clusters).")
    else:
        text += " Silhouette 1 means tight, well-separated clusters; near 0, overlapping ones."
    return text


def _interpret_pca(pca: dict[str, dict]) -> str:
    parts = []
    for m, p in pca.items():
        c90, c95, dim = p["components_90"], p["components_95"], p["dim"]
        parts.append(f"{display_name(m)} needs {c90} of its {dim} dimensions ({c90 / dim:.0%}) for "
                     f"90% of the variance and {c95} for 95%")
    text = "; ".join(parts) + "."
    text += (" A small share means the vectors lie near a low-dimensional subspace (a few "
             "directions carry most differences between events); a large one, that the space is "
             "used evenly.")
    return text


def _strength(x: float | None, cuts: Sequence[tuple[float, str]]) -> str:
    if x is None:
        return "undefined"
    for cut, word in cuts:
        if x < cut:
            return word
    return cuts[-1][1]


_ARI_WORDS = ((0.1, "close to chance"), (0.3, "weak"), (0.6, "moderate"), (0.85, "strong"),
              (math.inf, "near identical"))
_KAPPA_WORDS = ((-0.05, "worse than chance"), (0.05, "at chance level"), (0.2, "slight"),
                (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"), (math.inf, "almost perfect"))
_RHO_WORDS = ((0.2, "barely related"), (0.4, "weakly related"), (0.7, "moderately related"),
              (math.inf, "strongly related"))


def _interpret_agreement(a: dict) -> str:
    p, s = display_name(a["primary"]), display_name(a["shadow"])
    ari, kappa, rho = a["adjusted_rand_index"], a["cohen_kappa"], a["spearman"]
    fmt = (lambda v: "n/a" if v is None else f"{v:.2f}")
    return (f"Over {a['events']:,} events scored by both: cluster agreement is "
            f"{_strength(ari, _ARI_WORDS)} (adjusted Rand index {fmt(ari)}; 0 = chance, "
            f"1 = identical partitions), outlier-flag agreement is "
            f"{_strength(kappa, _KAPPA_WORDS)} (Cohen's kappa {fmt(kappa)}) and the scores are "
            f"{_strength(rho, _RHO_WORDS)} (Spearman {fmt(rho)}). {p} flags "
            f"{a['outliers'][a['primary']]:,} of these events, {s} {a['outliers'][a['shadow']]:,}, "
            f"both {a['both_outlier']:,}.")


def _interpret_detection(det: dict[str, dict | None]) -> str:
    ok = {m: d for m, d in det.items() if d}
    if not ok:
        return "No model has scored labelled events."
    fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
    sizes = {m: (d["n_attack"], d["n_ordinary"]) for m, d in ok.items()}
    parts = [f"{display_name(m)} ROC-AUC {fmt(d['roc_auc'])}, average precision "
             f"{fmt(d['average_precision'])}, TPR at 1% FPR {fmt(d['tpr_at_1pct_fpr'])}"
             for m, d in ok.items()]
    if len(set(sizes.values())) == 1:
        n_att, n_ord = next(iter(sizes.values()))
        text = (f"On {n_att + n_ord:,} labelled events ({n_att:,} attack; higher is better): "
                + "; ".join(parts) + ".")
    else:
        text = ("Higher is better: " + "; ".join(
            f"{part} (on {sum(sizes[m]):,} labelled events, {sizes[m][0]:,} attack)"
            for part, m in zip(parts, ok, strict=True))
            + ". The models scored different labelled events, so compare with care.")
    aucs = {m: d["roc_auc"] for m, d in ok.items() if d["roc_auc"] is not None}
    if aucs and max(aucs.values()) < 0.55:
        text += " No model ranks attack events much above chance (ROC-AUC 0.5) here."
    elif len(aucs) > 1:
        top = max(aucs, key=aucs.get)
        if aucs[top] - min(aucs.values()) < 0.01:
            text += " The models rank attack events about equally well."
        else:
            text += f" {display_name(top)} ranks attack events above ordinary ones most often."
    return text


def _interpret_evaluations(evals: list[dict]) -> str:
    last = evals[-1]
    scorers = eval_scorers(last["results"])
    aucs = {k: v["roc_auc"] for k, v in scorers.items()
            if isinstance(v.get("roc_auc"), (int, float))}
    when = str(last["created"])[:19].replace("T", " ")
    text = f"{len(evals)} stored `eval` run(s); the latest is from {when} UTC."
    if aucs:
        top = max(aucs, key=aucs.get)
        text += f" In it, {top} has the best ROC-AUC ({aucs[top]:.3f}) of {len(scorers)} scorers."
    return text


def _interpret_throughput(latest: dict[str, dict]) -> str:
    tps = {m: r.get("texts_per_second") for m, r in latest.items()}
    parts = [f"{display_name(m)} embedded {v:,.0f} texts/s ({latest[m]['events']:,} events seen, "
             f"{latest[m]['command']} started {str(latest[m]['run_started'])[:16].replace('T', ' ')})"
             for m, v in tps.items() if v is not None]
    if not parts:
        return "The latest runs embedded nothing new (every text came from the cache)."
    text = "Latest runs: " + "; ".join(parts) + "."
    known = {m: v for m, v in tps.items() if v}
    if len(known) > 1:
        fast, slow = max(known, key=known.get), min(known, key=known.get)
        text += (f" {display_name(fast)} is {known[fast] / known[slow]:.1f}x as fast as "
                 f"{display_name(slow)} per text.")
    return text


# -- the report -------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _iso(value) if hasattr(value, "isoformat") else value


def build_report(store: Store, out_dir: Path, *, sample: int = 20000, pairs: int = 20000,
                 k_range: Sequence[int] = range(2, 16), seed: int = 0,
                 models: Sequence[str] | None = None) -> dict:
    """Write ``report.html``, the figures (``*.png``) and ``summary.json`` to ``out_dir``;
    return the summary.

    Raises UsageError when the database holds no vectors (of the requested ``models``).
    """
    from plugin.report import plots
    from plugin.report.html import render_html

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sample < 2:
        raise UsageError("report: the sample needs at least 2 events")
    stored = stored_models(store)
    wanted = list(models) if models else list(KNOWN_MODELS)
    infos = {m: i for m, i in stored.items() if models is None or m in wanted}
    absent = {m: f"no {display_name(m)} vectors in text_vectors" for m in wanted if m not in stored}
    if not infos:
        have = ", ".join(stored) or "none"
        raise UsageError(f"report: database {store.path} has no vectors of "
                         f"{', '.join(wanted) if models else 'any model'} (models with vectors: "
                         f"{have}); import with embeddings first")
    names = list(infos)
    primary, shadows = names[0], names[1:]
    missing: dict[str, str] = {}
    interp: dict[str, str] = {}
    figures: dict[str, str] = {}
    for m, why in absent.items():
        missing[f"model:{m}"] = why
    total_events = int(store.con.execute("SELECT count(*) FROM events").fetchall()[0][0])
    log.info("report_start", db=store.path, models=names, events=total_events, sample=sample)

    # the sample: shared by every model, unless no event has vectors from all of them
    shared = sample_events(store, list(infos.values()), sample, seed)
    if len(shared) >= 2 or len(names) == 1:
        samples = {m: shared for m in names}
        sample_note = None
    else:
        samples = {m: sample_events(store, [infos[m]], sample, seed) for m in names}
        sample_note = ("no event has vectors from every model, so each model is sampled on its "
                       "own events: the pair and cluster statistics are not on the same events")
        missing["same_sample"] = sample_note
    t_sample = time.perf_counter()

    # (a) cosine over random event pairs
    cos_values: dict[str, np.ndarray] = {}
    same_text = None
    for m in names:
        s = samples[m]
        pr = sample_pairs(len(s), pairs, seed)
        if len(pr):
            cos_values[m] = pair_cosines(s.vectors[m], pr)
            if s is shared:
                h = np.asarray(s.hashes, dtype=object)
                same_text = float(np.mean(h[pr[:, 0]] == h[pr[:, 1]]))
    cosine = {m: cosine_stats(c) for m, c in cos_values.items()} or None
    if cosine:
        for m in names:
            if m not in cosine:
                missing[f"cosine:{m}"] = f"fewer than 2 {display_name(m)} events with vectors"
        interp["cosine"] = _interpret_cosine(cosine, same_text if sample_note is None else None)
        figures["cosine"] = plots.cosine_histogram(cos_values, out_dir / "cosine_pairs.png").name
    else:
        missing["cosine"] = "fewer than 2 events with vectors: no pairs to compare"
    t_cos = time.perf_counter()

    # (b) silhouette for k in k_range, (c) PCA
    silhouette: dict[str, dict] = {}
    pca: dict[str, dict] = {}
    for m in names:
        x = samples[m].vectors[m]
        if len(x) >= 3:
            silhouette[m] = silhouette_curve(x[:KMEANS_EVENTS], k_range, seed)
        if len(x) >= 2:
            pca[m] = pca_summary(x, seed)
    t_sil = time.perf_counter()
    if silhouette:
        interp["silhouette"] = _interpret_silhouette(silhouette)
        figures["silhouette"] = plots.silhouette_curves(silhouette, out_dir / "silhouette.png").name
    else:
        missing["silhouette"] = "fewer than 3 events with vectors: nothing to cluster"
    if pca:
        interp["pca"] = _interpret_pca(pca)
        figures["pca_cumulative"] = plots.pca_cumulative(pca, out_dir / "pca_cumulative.png").name
        figures["pca_scree"] = plots.pca_scree(pca, out_dir / "pca_scree.png").name
    else:
        missing["pca"] = "fewer than 2 events with vectors"

    # (d) agreement between the primary and each shadow
    agree: dict[str, dict | None] | None = None
    if not _has_table(store, "assignments"):
        missing["agreement"] = "the database predates scoring (no assignments table)"
    elif not shadows:
        missing["agreement"] = (f"only {display_name(primary)} has vectors: there is no shadow to "
                                "agree with")
    else:
        agree = {}
        for sh in shadows:
            res, arrays, why = agreement(store, primary, sh)
            agree[sh] = res
            if res is None:
                missing[f"agreement:{sh}"] = why
                continue
            interp[f"agreement:{sh}"] = _interpret_agreement(res)
            figures[f"scores:{sh}"] = plots.score_scatter(
                arrays, primary, sh, out_dir / f"scores_{primary}_vs_{sh}.png", seed=seed).name
        if not any(agree.values()):
            missing["agreement"] = "; ".join(missing[f"agreement:{sh}"] for sh in shadows)
            agree = None
    t_agree = time.perf_counter()

    # (e) detection: labels in the database, and stored eval runs
    detection: dict[str, dict | None] | None = None
    if not (_has_table(store, "labels") and _has_table(store, "assignments")):
        missing["detection"] = "the database predates migration 4 (no labels table)"
    elif not store.con.execute("SELECT count(*) FROM labels").fetchall()[0][0]:
        missing["detection"] = "no labelled events (labels table is empty; `eval` writes labels)"
    else:
        detection, curves = {}, {}
        for m in names:
            score, flagged, is_attack = label_rows(store, m)
            if score.size == 0:
                detection[m] = None
                missing[f"detection:{m}"] = f"no labelled event has a {display_name(m)} assignment"
                continue
            detection[m] = detection_metrics(score, is_attack, flagged)
            if is_attack.any() and (~is_attack).any():
                curves[m] = (score, is_attack)
        if not any(detection.values()):
            missing["detection"] = "labels exist, but no labelled event was scored by any model"
            detection = None
        else:
            interp["detection"] = _interpret_detection(detection)
            if curves:
                figures["roc"] = plots.roc_curves(curves, out_dir / "roc.png").name
    evaluations: list[dict] | None = None
    if not _has_table(store, "evaluations"):
        missing["evaluations"] = "the database predates migration 4 (no evaluations table)"
    else:
        evaluations = _evaluations(store) or None
        if evaluations is None:
            missing["evaluations"] = "no stored `eval` results (run `eval --db` on this database)"
        else:
            interp["evaluations"] = _interpret_evaluations(evaluations)

    # (f) throughput recorded by imports
    throughput: dict | None = None
    if not _has_table(store, "model_runs"):
        missing["throughput"] = "the database predates migration 4 (no model_runs table)"
    else:
        runs = _model_runs(store)
        if not runs:
            missing["throughput"] = ("no model_runs rows: no import with embeddings recorded "
                                     "throughput")
        else:
            latest: dict[str, dict] = {}
            for r in runs:  # ordered by run_started: the last one per model wins
                latest[r["model"]] = r
            order = [m for m in names if m in latest] + [m for m in latest if m not in names]
            latest = {m: latest[m] for m in order}
            throughput = {"latest": latest, "runs": runs}
            interp["throughput"] = _interpret_throughput(latest)

    schema_version = store.schema_version()
    summary: dict[str, Any] = {
        "title": "sysmon-blt: primary vs shadow embedding comparison",
        "generated": utcnow().isoformat(timespec="seconds"),
        "tool_version": __version__,
        "db": store.path,
        "schema_version": schema_version,
        "params": {"sample": sample, "pairs": pairs, "k_range": [int(k) for k in k_range],
                   "seed": seed, "models": list(models) if models else None},
        "events": total_events,
        "primary": primary,
        "shadows": shadows,
        "models": {m: {"version": i.version, "versions": i.versions, "dim": i.dim,
                       "texts": i.texts, "events": i.events,
                       "role": "primary" if m == primary else "shadow"}
                   for m, i in infos.items()},
        "absent": absent,
        "sample": {
            "shared": sample_note is None,
            "events": {m: len(samples[m]) for m in names},
            "population": {m: samples[m].population for m in names},
            "pairs": {m: int(cos_values[m].size) for m in cos_values},
            "pairs_same_text": same_text if sample_note is None else None,
            "kmeans_events": {m: s["events"] for m, s in silhouette.items()},
            "silhouette_events": {m: s["silhouette_events"] for m, s in silhouette.items()},
        },
        "cosine": cosine,
        "silhouette": silhouette or None,
        "pca": pca or None,
        "agreement": agree,
        "detection": detection,
        "evaluations": evaluations,
        "throughput": throughput,
        "missing": missing,
        "interpretation": interp,
        "figures": figures,
        "timings": {},
        "seconds": 0.0,
    }
    t_html = time.perf_counter()
    summary["timings"] = {"sample": t_sample - t0, "cosine": t_cos - t_sample,
                          "silhouette_pca": t_sil - t_cos, "agreement": t_agree - t_sil,
                          "detection_throughput_figures": t_html - t_agree}
    summary["timings"] = {k: round(v, 3) for k, v in summary["timings"].items()}
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary = _clean(summary)
    (out_dir / "report.html").write_text(render_html(summary, out_dir), encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("report_written", out=str(out_dir), seconds=summary["seconds"],
             missing=sorted(missing), figures=len(figures))
    return summary

