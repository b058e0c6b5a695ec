"""`sysmon-blt report`: the primary (BLT) and the shadow (Linformer) embeddings, side by side.

It reproduces, on the events of one database, the comparison a published study made between
BLT and BPE+Linformer embeddings of Sysmon messages: (a) how spread out the vectors of random
event pairs are, (b) how well KMeans separates them for k = 2..15, (c) how many principal
components carry their variance, then what only a running system knows: (d) whether the two
models agree on clusters, outlier flags and scores, (e) how well each detects labelled attacks,
(f) how fast each embedded during imports.

This module orchestrates: the store answers the questions (:mod:`plugin.store.reports`),
:mod:`plugin.report.statistics` computes the numbers, :mod:`plugin.report.interpret` words
them, :mod:`plugin.report.plots` and :mod:`plugin.report.html` draw and render them.

Why these choices:

* Both models are judged on the same events and the same pairs: the sample is drawn from events
  whose text has a vector of every compared model. Only when no event has all of them (the
  shadow embedded a disjoint sample) is each model sampled on its own, and the report says so.
* The sample is a deterministic function of the seed and the event keys, drawn inside the
  database (see :meth:`~plugin.store.reports.ReportQueries.sample_event_vectors`); its first
  rows are themselves a uniform subsample, which the costlier steps (KMeans, silhouette) take.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from plugin import __version__
from plugin.detect.metrics import detection_metrics
from plugin.errors import UsageError
from plugin.report import plots
from plugin.report.html import render_html
from plugin.report.interpret import (
    interpret_agreement,
    interpret_cosine,
    interpret_detection,
    interpret_evaluations,
    interpret_pca,
    interpret_silhouette,
    interpret_throughput,
)
from plugin.report.names import KNOWN_MODELS, display_name, primary_first
from plugin.report.statistics import (
    KMEANS_EVENTS,
    EventSample,
    agreement_numbers,
    cosine_stats,
    pair_cosines,
    pca_summary,
    sample_pairs,
    silhouette_curve,
    unit_sample,
)
from plugin.store import Store, utcnow
from plugin.store.reports import ModelInfo

log = structlog.get_logger(__name__)

__all__ = ["agreement", "build_report", "sample_events"]


def sample_events(store: Store, models: Sequence[ModelInfo], n: int, seed: int) -> EventSample:
    """Up to ``n`` events with vectors of every given model, in a seeded random order (any
    prefix is a uniform sample), each with its text's L2-normalized vector per model."""
    return unit_sample(models, store.sample_event_vectors(models, n, seed))


def agreement(store: Store, primary: str,
              shadow: str) -> tuple[dict | None, dict | None, str | None]:
    """ARI of clusters, Cohen's kappa of outlier flags, Spearman of scores, over the events both
    models assigned. Returns (summary, arrays for the scatter plot, reason when None)."""
    pairs = store.model_agreement(primary, shadow)
    missing = [m for m in (primary, shadow) if not pairs.assigned.get(m)]
    if missing:
        return None, None, (f"no assignments for {', '.join(map(display_name, missing))}: its "
                            "events were embedded but never scored (run `fit`, then `rescore`)")
    if len(pairs.clusters[0]) == 0:
        return None, None, (f"no event has assignments from both {display_name(primary)} and "
                            f"{display_name(shadow)}")
    out, arrays = agreement_numbers(pairs, primary, shadow)
    return out, arrays, None


def _iso(value: Any) -> Any:
    """A timestamp as ISO 8601 text, the form summary.json carries; anything else as is."""
    return value.isoformat() if hasattr(value, "isoformat") else value


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
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sample < 2:
        raise UsageError("report: the sample needs at least 2 events")
    found = store.stored_models()
    stored = {m: found[m] for m in primary_first(found)}
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
    total_events = store.event_count()
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
        interp["cosine"] = interpret_cosine(cosine, same_text if sample_note is None else None)
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
        interp["silhouette"] = interpret_silhouette(silhouette)
        figures["silhouette"] = plots.silhouette_curves(silhouette, out_dir / "silhouette.png").name
    else:
        missing["silhouette"] = "fewer than 3 events with vectors: nothing to cluster"
    if pca:
        interp["pca"] = interpret_pca(pca)
        figures["pca_cumulative"] = plots.pca_cumulative(pca, out_dir / "pca_cumulative.png").name
        figures["pca_scree"] = plots.pca_scree(pca, out_dir / "pca_scree.png").name
    else:
        missing["pca"] = "fewer than 2 events with vectors"

    # (d) agreement between the primary and each shadow
    agree: dict[str, dict | None] | None = None
    if not store.has_table("assignments"):
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
            interp[f"agreement:{sh}"] = interpret_agreement(res)
            figures[f"scores:{sh}"] = plots.score_scatter(
                arrays, primary, sh, out_dir / f"scores_{primary}_vs_{sh}.png", seed=seed).name
        if not any(agree.values()):
            missing["agreement"] = "; ".join(missing[f"agreement:{sh}"] for sh in shadows)
            agree = None
    t_agree = time.perf_counter()

    # (e) detection: labels in the database, and stored eval runs
    detection: dict[str, dict | None] | None = None
    if not (store.has_table("labels") and store.has_table("assignments")):
        missing["detection"] = "the database predates migration 4 (no labels table)"
    elif not store.label_count():
        missing["detection"] = "no labelled events (labels table is empty; `eval` writes labels)"
    else:
        detection, curves = {}, {}
        for m in names:
            score, flagged, is_attack = store.label_rows(m)
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
            interp["detection"] = interpret_detection(detection)
            if curves:
                figures["roc"] = plots.roc_curves(curves, out_dir / "roc.png").name
    evaluations: list[dict] | None = None
    if not store.has_table("evaluations"):
        missing["evaluations"] = "the database predates migration 4 (no evaluations table)"
    else:
        evaluations = [{**e, "created": _iso(e["created"])} for e in store.evaluations()] or None
        if evaluations is None:
            missing["evaluations"] = "no stored `eval` results (run `eval --db` on this database)"
        else:
            interp["evaluations"] = interpret_evaluations(evaluations)

    # (f) throughput recorded by imports
    throughput: dict | None = None
    if not store.has_table("model_runs"):
        missing["throughput"] = "the database predates migration 4 (no model_runs table)"
    else:
        runs = [{k: _iso(v) for k, v in r.items()} for r in store.model_runs()]
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
            interp["throughput"] = interpret_throughput(latest)

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

