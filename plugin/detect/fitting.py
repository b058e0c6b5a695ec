"""Fits stored in the database, and the scorer an import uses.

`fit` learns the events of a database as normal: KMeans clusters (a new `version` in `clusters`)
and the kNN baseline (the distinct texts, with their event counts, in `baseline`). Policy: a
refit never quietly absorbs outliers into normal: texts the current fit flags are left out of
the new baseline unless an analyst marked their alert a false positive, or `--accept-outliers`
says so. Before any fit, the model directory's shipped reference centroids score (version 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import structlog

from plugin.detect.context import ContextModel
from plugin.detect.kmeans import ClusterModel, fit_clusters
from plugin.store import Store
from plugin.store.fits import StoredClusters

log = structlog.get_logger(__name__)


@dataclass
class LoadedScorer:
    version: int
    scorer: object
    clusters: ClusterModel
    medoids: list[str]
    baseline_hashes: list[str]
    origin: str
    #: prevalence and lineage terms on top of the content score (a fit with an embedder); None
    #: for the cold start and for scorers without a content model
    context: object | None = None


def load_scorer(store: Store, model: str, model_version: str, model_dir: Path | None,
                record: bool = True, embedder=None) -> LoadedScorer | None:
    """The latest fit's kNN scorer, else the shipped reference clusters (recorded as version 0
    unless `record` is False, for read-only databases)."""
    from plugin.detect.outliers import CentroidScorer, KnnScorer

    fit = store.latest_fit(model, model_version)
    if fit is not None:
        version, params = fit
        stored = store.fit_clusters(model, version)
        clusters = ClusterModel(centroids=stored.centroids, thresholds=stored.thresholds,
                                sizes=stored.sizes, quantile=0.0,
                                medoid_index=np.full(len(stored.sizes), -1, dtype=np.int64))
        baseline = store.fit_baseline(model, version)
        got = store.read_vectors(model, model_version, [h for h, _ in baseline])
        baseline = [(h, w) for h, w in baseline if h in got]
        hashes = [h for h, _ in baseline]
        weights = np.array([w for _, w in baseline], dtype=np.float64)
        scorer = KnnScorer(np.stack([got[h] for h in hashes]), weights,
                           quantile=params.get("quantile", 0.99), clusters=clusters)
        if embedder is not None and params.get("surprisal_threshold"):
            from plugin.detect.surprisal import SurprisalFirstScorer

            scorer = SurprisalFirstScorer(embedder, params["surprisal_threshold"], scorer)
        context = None
        if embedder is not None and params.get("context"):
            from plugin.detect.context import ContextModel

            context = ContextModel.from_params(params["context"])
        return LoadedScorer(version, scorer, clusters, stored.medoids, hashes, "fit", context)
    if model_dir is None:
        return None
    from plugin.detect.reference import load_reference

    ref = load_reference(model_dir, model)
    if ref is None:
        return None
    clusters, meta = ref
    if record:
        store.record_shipped_fit(
            model, model_version,
            StoredClusters(clusters.centroids, clusters.thresholds, clusters.sizes, []),
            "surprisal+centroid" if meta.get("surprisal_threshold") else "centroid", meta)
    scorer = CentroidScorer(clusters)
    if embedder is not None and meta.get("surprisal_threshold"):
        from plugin.detect.surprisal import SurprisalFirstScorer

        scorer = SurprisalFirstScorer(embedder, meta["surprisal_threshold"], scorer)
    return LoadedScorer(0, scorer, clusters, [""] * clusters.centroids.shape[0], [], "shipped")


@dataclass
class BaselineEvents:
    """A baseline's events in log order: what the context walk needs of each."""

    event_ids: list[int]
    fields: list[dict]  # the process GUIDs at least
    text_index: np.ndarray  # each event's index into the baseline's distinct texts
    computers: list[str | None]
    sources: list[str]


@dataclass
class DefaultFit:
    """What the default scorer learns from a baseline: the window-surprisal threshold and the
    context (prevalence + lineage); ``bits``: each distinct text's window surprisal."""

    surprisal_threshold: float
    context: ContextModel
    bits: np.ndarray


def fit_default_scorer(embedder, texts: Sequence[str], weights: np.ndarray,
                       events: BaselineEvents, quantile: float = 0.99,
                       seed: int = 0) -> DefaultFit:
    """The one recipe for the default scorer, used by `fit` and `eval`: the surprisal threshold
    at ``quantile`` of the distinct texts (weighted by events), then the context walked over
    the baseline's events with their calibrated content scores. The window surprisal of the
    texts is computed once, for both."""
    from plugin.detect.context import calibration_groups, fit_context
    from plugin.detect.surprisal import SurprisalScorer, window_surprisal

    bits = window_surprisal(embedder, list(texts))
    threshold = SurprisalScorer(embedder, texts, weights, quantile=quantile, seed=seed,
                                bits=bits).threshold
    groups, how = calibration_groups(events.computers, events.sources)
    idx = events.text_index
    context = fit_context(events.event_ids, events.fields, [texts[i] for i in idx], groups,
                          (bits / threshold)[idx], quantile=quantile, calibration=how)
    log.info("context_fitted", events=len(idx), images=len(context.images),
             threshold=context.threshold, groups=how)
    return DefaultFit(threshold, context, bits)


def _baseline_events(store: Store, hashes: list[str]) -> BaselineEvents:
    """The stored events of the baseline's texts, in log order, with their process GUIDs."""
    from plugin.detect.context import process_fields

    index = {h: i for i, h in enumerate(hashes)}
    ev = BaselineEvents([], [], np.zeros(0, dtype=np.int64), [], [])
    idx: list[int] = []
    for batch in store.events_in_log_order(50_000, text_hashes=hashes):
        for e in batch:
            ev.event_ids.append(int(e.event_id))
            try:
                ev.fields.append(process_fields(orjson.loads(e.fields) if e.fields else {}))
            except orjson.JSONDecodeError:
                ev.fields.append({})
            idx.append(index[e.text_hash])
            ev.computers.append(e.computer)
            ev.sources.append(e.source)
    ev.text_index = np.asarray(idx, dtype=np.int64)
    return ev


def fit_database(store: Store, model: str, model_version: str, *, k: int | None = None,
                 quantile: float = 0.99, accept_outliers: bool = False, seed: int = 0,
                 embedder=None, flags_of: str | None = None) -> dict:
    """Fit clusters and the kNN baseline on the database's events; returns the new version.

    ``flags_of`` names the model whose outlier flags hold texts back (default: this model); the
    shadow passes the primary's, so both models learn the same baseline and stay comparable.
    """
    cands = store.baseline_candidates(model, model_version, flags_of or model)
    if not cands:
        if store.event_count() == 0:
            raise ValueError(f"{store.path} holds no events: import a baseline you trust first")
        raise ValueError(f"the events in {store.path} have no {model} vectors of version "
                         f"{model_version} (imported with --no-embed, or with another --model): "
                         f"run `sysmon-blt rescore --db {store.path}` to embed and score them, "
                         "then fit")
    held_back = [c for c in cands if c.was_flagged and not accept_outliers]
    rows = [c for c in cands if not (c.was_flagged and not accept_outliers)]
    if not rows:
        raise ValueError("every stored text is a flagged outlier; nothing left to fit on "
                         "(use --accept-outliers to fit on them anyway)")
    hashes = [c.text_hash for c in rows]
    weights = np.array([c.events for c in rows], dtype=np.float64)
    got = store.read_vectors(model, model_version, hashes)
    vectors = np.stack([got[h] for h in hashes])
    clusters = fit_clusters(vectors, weights, k=k, quantile=quantile, seed=seed)
    params = {"k": int(clusters.centroids.shape[0]), "quantile": quantile, "seed": seed,
              "held_back_outlier_texts": len(held_back), "accept_outliers": accept_outliers}
    if embedder is not None:
        texts = [c.normalized for c in rows]
        default = fit_default_scorer(embedder, texts, weights, _baseline_events(store, hashes),
                                     quantile=quantile, seed=seed)
        params["surprisal_threshold"] = default.surprisal_threshold
        params["context"] = default.context.to_params()
    medoids = [rows[int(mi)].normalized if mi >= 0 else "" for mi in clusters.medoid_index]
    version = store.save_fit(
        model, model_version, "surprisal+knn" if embedder is not None else "knn", params,
        StoredClusters(clusters.centroids, clusters.thresholds, clusters.sizes, medoids),
        list(zip(hashes, weights.astype(np.int64).tolist())))
    log.info("fit_done", model=model, version=version, texts=len(hashes), events=int(weights.sum()),
             k=params["k"], held_back=len(held_back))
    summary = dict(params)
    if "context" in summary:  # the path list stays in the database; its size is enough here
        summary["context"] = {**params["context"], "images": len(params["context"]["images"])}
    return {"model": model, "model_version": model_version, "version": version,
            "baseline_texts": len(hashes), "baseline_events": int(weights.sum()), **summary}
