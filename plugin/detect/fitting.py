"""Fits stored in the database, and the scorer an import uses.

`fit` learns the events of a database as normal: KMeans clusters (a new `version` in `clusters`)
and the kNN baseline (the distinct texts, with their event counts, in `baseline`). Policy: a
refit never quietly absorbs outliers into normal: texts the current fit flags are left out of
the new baseline unless an analyst marked their alert a false positive, or `--accept-outliers`
says so. Before any fit, the model directory's shipped reference centroids score (version 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from plugin.detect.kmeans import ClusterModel, fit_clusters
from plugin.store.duckdb import Store, utcnow

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


def latest_fit(store: Store, model: str, model_version: str) -> tuple[int, dict] | None:
    rows = store.con.execute(
        "SELECT version, params FROM fits WHERE model = ? AND model_version = ? AND origin = 'fit' "
        "ORDER BY version DESC LIMIT 1", [model, model_version]).fetchall()
    if not rows:
        return None
    return int(rows[0][0]), json.loads(rows[0][1] or "{}")


def _clusters_from_db(store: Store, model: str, version: int) -> tuple[ClusterModel, list[str]]:
    rows = store.con.execute(
        "SELECT cluster, centroid, threshold, size, medoid FROM clusters WHERE model = ? AND "
        "version = ? ORDER BY cluster", [model, version]).fetchall()
    cm = ClusterModel(
        centroids=np.array([r[1] for r in rows], dtype=np.float32),
        thresholds=np.array([r[2] for r in rows], dtype=np.float32),
        sizes=np.array([r[3] for r in rows], dtype=np.int64),
        quantile=0.0,
        medoid_index=np.full(len(rows), -1, dtype=np.int64),
    )
    return cm, [r[4] for r in rows]


def load_scorer(store: Store, model: str, model_version: str, model_dir: Path | None,
                record: bool = True, embedder=None) -> LoadedScorer | None:
    """The latest fit's kNN scorer, else the shipped reference clusters (recorded as version 0
    unless `record` is False, for read-only databases)."""
    from plugin.detect.outliers import CentroidScorer, KnnScorer

    fit = latest_fit(store, model, model_version)
    if fit is not None:
        version, params = fit
        clusters, medoids = _clusters_from_db(store, model, version)
        rows = store.con.execute(
            "SELECT text_hash, weight FROM baseline WHERE model = ? AND version = ?",
            [model, version]).fetchall()
        hashes = [r[0] for r in rows]
        got = store.read_vectors(model, model_version, hashes)
        hashes = [h for h in hashes if h in got]
        weights = np.array([r[1] for r in rows if r[0] in got], dtype=np.float64)
        scorer = KnnScorer(np.stack([got[h] for h in hashes]), weights,
                           quantile=params.get("quantile", 0.99), clusters=clusters)
        if embedder is not None and params.get("surprisal_threshold"):
            from plugin.detect.surprisal import SurprisalFirstScorer

            scorer = SurprisalFirstScorer(embedder, params["surprisal_threshold"], scorer)
        context = None
        if embedder is not None and params.get("context"):
            from plugin.detect.context import ContextModel

            context = ContextModel.from_params(params["context"])
        return LoadedScorer(version, scorer, clusters, medoids, hashes, "fit", context)
    if model_dir is None:
        return None
    from plugin.detect.reference import load_reference

    ref = load_reference(model_dir, model)
    if ref is None:
        return None
    clusters, meta = ref
    if record:
        _record_shipped(store, model, model_version, clusters, meta)
    scorer = CentroidScorer(clusters)
    if embedder is not None and meta.get("surprisal_threshold"):
        from plugin.detect.surprisal import SurprisalFirstScorer

        scorer = SurprisalFirstScorer(embedder, meta["surprisal_threshold"], scorer)
    return LoadedScorer(0, scorer, clusters, [""] * clusters.centroids.shape[0], [], "shipped")


def _record_shipped(store: Store, model: str, model_version: str, clusters: ClusterModel,
                    meta: dict) -> None:
    if store.con.execute("SELECT 1 FROM fits WHERE model = ? AND version = 0",
                         [model]).fetchall():
        return
    store.con.begin()
    store.con.execute("INSERT INTO fits VALUES (?, ?, 0, ?, 'shipped', ?, NULL, ?)",
                      [model, model_version, utcnow(),
                       "surprisal+centroid" if meta.get("surprisal_threshold") else "centroid",
                       json.dumps(meta)]).fetchall()
    for i in range(clusters.centroids.shape[0]):
        store.con.execute("INSERT INTO clusters VALUES (?, ?, 0, ?, ?, ?, ?, '')",
                          [model, model_version, i, clusters.centroids[i].tolist(),
                           float(clusters.thresholds[i]), int(clusters.sizes[i])]).fetchall()
    store.con.commit()


def _fit_context(store: Store, rows: list, content: np.ndarray, quantile: float):
    """The context terms (`plugin.detect.context`) learned from the baseline's events, walked in
    arrival order with their process GUIDs; ``content``: each baseline text's calibrated content
    score, as an import scores it."""
    import orjson
    import pyarrow as pa

    from plugin.detect.context import calibration_groups, fit_context, process_fields

    index = {r[0]: i for i, r in enumerate(rows)}
    store.con.register("_fit_texts", pa.table({"text_hash": list(index)}))
    try:
        cur = store.con.execute(
            "SELECT e.event_id, e.fields, e.text_hash, e.computer, e.source FROM events e "
            "JOIN _fit_texts USING (text_hash) ORDER BY e.ts, e.event_key")
        eids, fields, idx, computers, sources = [], [], [], [], []
        while chunk := cur.fetchmany(50_000):
            for eid, f, h, computer, source in chunk:
                eids.append(int(eid))
                try:
                    fields.append(process_fields(orjson.loads(f) if f else {}))
                except orjson.JSONDecodeError:
                    fields.append({})
                idx.append(index[h])
                computers.append(computer)
                sources.append(source)
    finally:
        store.con.unregister("_fit_texts")
    groups, how = calibration_groups(computers, sources)
    idx_arr = np.asarray(idx, dtype=np.int64)
    model = fit_context(eids, fields, [rows[i][2] for i in idx], groups, content[idx_arr],
                        quantile=quantile, calibration=how)
    log.info("context_fitted", events=len(idx), images=len(model.images), threshold=model.threshold,
             groups=how)
    return model


def fit_database(store: Store, model: str, model_version: str, *, k: int | None = None,
                 quantile: float = 0.99, accept_outliers: bool = False, seed: int = 0,
                 embedder=None, flags_of: str | None = None) -> dict:
    """Fit clusters and the kNN baseline on the database's events; returns the new version.

    ``flags_of`` names the model whose outlier flags hold texts back (default: this model); the
    shadow passes the primary's, so both models learn the same baseline and stay comparable.
    """
    rows = store.con.execute(
        """
        WITH flagged AS (
            SELECT DISTINCT e.text_hash FROM assignments a JOIN events e USING (event_key)
            WHERE a.model = ? AND a.is_outlier
              AND e.text_hash NOT IN (
                  SELECT e2.text_hash FROM alerts al JOIN events e2 USING (event_key)
                  WHERE al.model = ? AND al.status = 'false_positive')
        )
        SELECT e.text_hash, count(*) AS n, any_value(e.normalized),
               bool_or(e.text_hash IN (SELECT text_hash FROM flagged)) AS was_flagged
        FROM events e JOIN text_vectors v
          ON v.text_hash = e.text_hash AND v.model = ? AND v.model_version = ?
        GROUP BY e.text_hash ORDER BY e.text_hash
        """, [flags_of or model, flags_of or model, model, model_version]).fetchall()
    if not rows:
        raise ValueError(f"no {model} vectors of version {model_version} in {store.path}: "
                         "import events with this model first")
    held_back = [r for r in rows if r[3] and not accept_outliers]
    rows = [r for r in rows if not (r[3] and not accept_outliers)]
    if not rows:
        raise ValueError("every stored text is a flagged outlier; nothing left to fit on "
                         "(use --accept-outliers to fit on them anyway)")
    hashes = [r[0] for r in rows]
    weights = np.array([r[1] for r in rows], dtype=np.float64)
    got = store.read_vectors(model, model_version, hashes)
    vectors = np.stack([got[h] for h in hashes])
    clusters = fit_clusters(vectors, weights, k=k, quantile=quantile, seed=seed)
    version = int(store.con.execute("SELECT coalesce(max(version), 0) + 1 FROM fits WHERE model = ?",
                                    [model]).fetchall()[0][0])
    params = {"k": int(clusters.centroids.shape[0]), "quantile": quantile, "seed": seed,
              "held_back_outlier_texts": len(held_back), "accept_outliers": accept_outliers}
    if embedder is not None:
        from plugin.detect.surprisal import SurprisalScorer

        from plugin.detect.surprisal import window_surprisal

        bits = window_surprisal(embedder, [r[2] for r in rows])  # once: threshold and context
        params["surprisal_threshold"] = SurprisalScorer(
            embedder, [r[2] for r in rows], weights, quantile=quantile, seed=seed, bits=bits).threshold
        params["context"] = _fit_context(store, rows, bits / params["surprisal_threshold"],
                                         quantile).to_params()
    store.con.begin()
    try:
        store.con.execute("INSERT INTO fits VALUES (?, ?, ?, ?, 'fit', ?, ?, ?)",
                          [model, model_version, version, utcnow(),
                           "surprisal+knn" if embedder is not None else "knn", int(weights.sum()),
                           json.dumps(params)]).fetchall()
        for i in range(clusters.centroids.shape[0]):
            mi = int(clusters.medoid_index[i])
            medoid = rows[mi][2] if mi >= 0 else ""
            store.con.execute("INSERT INTO clusters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              [model, model_version, version, i, clusters.centroids[i].tolist(),
                               float(clusters.thresholds[i]), int(clusters.sizes[i]), medoid]).fetchall()
        import pyarrow as pa

        store.con.register("_baseline", pa.table({
            "model": [model] * len(hashes), "version": [version] * len(hashes),
            "text_hash": hashes, "weight": weights.astype(np.int64)}))
        store.con.execute("INSERT INTO baseline SELECT * FROM _baseline").fetchall()
        store.con.unregister("_baseline")
        store.con.commit()
    except Exception:
        store.con.rollback()
        raise
    log.info("fit_done", model=model, version=version, texts=len(hashes), events=int(weights.sum()),
             k=params["k"], held_back=len(held_back))
    summary = dict(params)
    if "context" in summary:  # the path list stays in the database; its size is enough here
        summary["context"] = {**params["context"], "images": len(params["context"]["images"])}
    return {"model": model, "model_version": model_version, "version": version,
            "baseline_texts": len(hashes), "baseline_events": int(weights.sum()), **summary}
