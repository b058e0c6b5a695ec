"""Detection quality: fit on a trusted baseline, score test inputs, compare with anchors.

The baseline and test events come from one database (`eval` imports them first; a rerun on the
same database re-imports nothing, so the leave-one-capture-out folds share one import). Attack
events are labelled by whole inputs (`--attack`) or by process tree grown from a seed regex; the
same labelling drops attack trees from the baseline, so the fit sees a clean baseline.
Every scorer is judged on the same events and the same canonical texts. The default scorer's
outliers are also grouped into incidents (`plugin.detect.incidents`) as an import would group
them, and judged as an analyst reads them: best first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

import numpy as np
import orjson
import structlog

from plugin.detect.context import calibration_groups, fit_context, score_events
from plugin.detect.fitting import BaselineEvents, fit_default_scorer
from plugin.detect.incidents import (INCIDENT_WINDOW, MAX_OPEN, MAX_PENDING, MAX_PROCESSES,
                                     IncidentGrouper, observe, ranked)
from plugin.detect.labels import LabelEvent, attack_tree_labels
from plugin.detect.metrics import detection_metrics
from plugin.detect.surprisal import window_surprisal
from plugin.store import Store

log = structlog.get_logger(__name__)


@dataclass
class EvalSpec:
    baseline: list[str]
    test: list[str]
    attack_seed: str | None = None
    attack: list[str] = field(default_factory=list)
    model: str = "blt"
    model_version: str = ""
    quantile: float = 0.99
    anchors: bool = True
    context_anchor: bool = True  # tfidf-1nn + the same context terms
    shadow_model: str = "linformer"
    shadow_version: str = ""  # empty: no shadow vectors to evaluate


def _matches(source: str, roots: Sequence[str]) -> bool:
    for r in roots:
        r = r.rstrip("/")
        if source == r or source.startswith(r + "/") or source.startswith(r + "!"):
            return True
    return False


@dataclass
class _Events:
    keys: list[str]
    hashes: list[str]
    texts: list[str]
    fields: list[dict]
    sources: list[str]
    event_ids: list[int] = field(default_factory=list)
    computers: list[str | None] = field(default_factory=list)
    times: list[datetime | None] = field(default_factory=list)


def _load(store: Store, roots: Sequence[str]) -> _Events:
    """Events under `roots` in arrival order (the order the context scorer walks them in)."""
    ev = _Events([], [], [], [], [])
    for batch in store.events_in_log_order(50_000):
        for e in batch:
            if _matches(e.source, roots):
                ev.keys.append(e.event_key)
                ev.hashes.append(e.text_hash)
                ev.texts.append(e.normalized)
                ev.fields.append(orjson.loads(e.fields) if e.fields else {})
                ev.sources.append(e.source)
                ev.event_ids.append(int(e.event_id))
                ev.computers.append(e.computer)
                ev.times.append(e.ts)
    return ev


def _vectors(store: Store, model: str, version: str, hashes: list[str]) -> np.ndarray:
    got = store.read_vectors(model, version, hashes)
    missing = [h for h in hashes if h not in got]
    if missing:
        raise RuntimeError(f"{len(missing)} texts have no {model} vector of version {version}; "
                           "import them with this model first")
    return np.stack([got[h] for h in hashes]).astype(np.float32)


def _keep(store: Store, spec: EvalSpec, keys: list[str], is_attack: np.ndarray,
          results: dict) -> None:
    """Labels of the test events and the results, kept in the database for `report`."""
    how = (f"eval --attack-seed {spec.attack_seed}" if spec.attack_seed
           else f"eval --attack {' '.join(spec.attack)}")
    spec_doc = {"baseline": spec.baseline, "test": spec.test, "attack_seed": spec.attack_seed,
                "attack": spec.attack, "model": spec.model, "model_version": spec.model_version,
                "shadow_model": spec.shadow_model, "shadow_version": spec.shadow_version}
    store.keep_evaluation(keys, is_attack.tolist(), how, spec_doc, results)


def _heldout_content(cls, texts: list[str], weights: np.ndarray, quantile: float,
                     folds: int = 5, seed: int = 0) -> tuple[np.ndarray, float]:
    """An anchor's content score for every baseline text as a new text would get it (k-fold: each
    fold scored against the others), and its calibration threshold (the weighted `quantile`)."""
    from plugin.detect.calibration import THRESHOLD_FLOOR, weighted_quantile

    n = len(texts)
    raw = np.zeros(n, dtype=np.float64)
    if n < 2 * folds:
        return raw, 1.0
    perm = np.random.default_rng(seed).permutation(n)
    for k in range(folds):
        hold = perm[k::folds]
        rest = np.sort(np.setdiff1d(perm, hold))
        sc = cls()
        sc.fit([texts[i] for i in rest])
        raw[hold] = np.asarray(sc.score([texts[i] for i in hold]))
    threshold = max(weighted_quantile(raw, weights, quantile), THRESHOLD_FLOOR)
    return raw / threshold, threshold


def evaluate(store: Store, spec: EvalSpec, embedder=None, record_labels: bool = True) -> dict:
    t0 = time.perf_counter()
    base = _load(store, spec.baseline)
    test = _load(store, spec.test + spec.attack)
    if not base.keys or not test.keys:
        raise ValueError("no baseline or no test events in the database for the given paths")
    if spec.attack_seed:
        attack = attack_tree_labels(
            [LabelEvent(k, f) for k, f in zip(test.keys, test.fields)], spec.attack_seed)
        dirty = attack_tree_labels(
            [LabelEvent(k, f) for k, f in zip(base.keys, base.fields)], spec.attack_seed)
    else:
        attack = {k for k, s in zip(test.keys, test.sources) if _matches(s, spec.attack)}
        dirty = set()
    keep = [i for i, k in enumerate(base.keys) if k not in dirty]
    test_keys = set(test.keys)
    keep = [i for i in keep if base.keys[i] not in test_keys]  # an event never judges itself
    is_attack = np.array([k in attack for k in test.keys])

    # distinct baseline texts with their event counts
    weight: dict[str, int] = {}
    text_of: dict[str, str] = {}
    for i in keep:
        weight[base.hashes[i]] = weight.get(base.hashes[i], 0) + 1
        text_of[base.hashes[i]] = base.texts[i]
    b_hashes = list(weight)
    b_weights = np.array([weight[h] for h in b_hashes], dtype=np.float64)
    t_hashes = list(dict.fromkeys(test.hashes))
    t_index = {h: i for i, h in enumerate(t_hashes)}
    per_event = np.array([t_index[h] for h in test.hashes])
    t_text = {h: t for h, t in zip(test.hashes, test.texts)}
    b_texts = [text_of[h] for h in b_hashes]
    t_texts = [t_text[h] for h in t_hashes]

    results: dict[str, dict] = {}
    incidents: dict | None = None

    def record(name: str, distinct_scores: np.ndarray | None = None, event_scores=None,
               calibrated: bool = False, seconds: float = 0.0) -> None:
        scores = event_scores if event_scores is not None else distinct_scores[per_event]
        flagged = scores >= 1.0 if calibrated else None
        m = detection_metrics(np.asarray(scores, dtype=np.float64), is_attack, flagged)
        m["seconds"] = round(seconds, 2)
        results[name] = m

    def vector_scorers(model: str, version: str) -> np.ndarray:
        """kNN, KMeans and kNN + cluster rarity on one model's vectors; returns the kNN scores."""
        from plugin.detect.kmeans import fit_clusters
        from plugin.detect.outliers import CentroidScorer, CombinedScorer, KnnScorer

        bv = _vectors(store, model, version, b_hashes)
        tv = _vectors(store, model, version, t_hashes)
        t = time.perf_counter()
        knn = KnnScorer(bv, b_weights, quantile=spec.quantile)
        knn_scores = knn.score(tv).score
        record(f"{model}-knn", knn_scores, calibrated=True, seconds=time.perf_counter() - t)
        t = time.perf_counter()
        clusters = fit_clusters(bv, b_weights, quantile=spec.quantile)
        record(f"{model}-kmeans", CentroidScorer(clusters).score(tv).score, calibrated=True,
               seconds=time.perf_counter() - t)
        t = time.perf_counter()
        combined = CombinedScorer(KnnScorer(bv, b_weights, quantile=spec.quantile, clusters=clusters),
                                  clusters)
        record(f"{model}-knn+rarity", combined.score(tv).score, calibrated=True,
               seconds=time.perf_counter() - t)
        return knn_scores

    b_index = {h: i for i, h in enumerate(b_hashes)}
    b_events = BaselineEvents([base.event_ids[i] for i in keep], [base.fields[i] for i in keep],
                              np.array([b_index[base.hashes[i]] for i in keep], dtype=np.int64),
                              [base.computers[i] for i in keep], [base.sources[i] for i in keep])

    def context_rows(rows: Sequence[tuple[str, dict]], b_content: np.ndarray,
                     t_content: np.ndarray, seconds: float = 0.0) -> None:
        """Context terms (`plugin.detect.context`) with other weights (the ablations) or over
        another content score (the TF-IDF anchor), fitted on the baseline's events as the
        default recipe fits them, each scoring the test's events in order."""
        t = time.perf_counter()
        groups, how = calibration_groups(b_events.computers, b_events.sources)
        for row, kw in rows:
            model = fit_context(b_events.event_ids, b_events.fields,
                                [b_texts[i] for i in b_events.text_index], groups,
                                b_content[b_events.text_index], quantile=spec.quantile,
                                calibration=how, **kw)
            record(row, event_scores=score_events(model, test.event_ids, test.fields, test.texts,
                                                  t_content[per_event]),
                   calibrated=True, seconds=seconds + time.perf_counter() - t)
            t, seconds = time.perf_counter(), 0.0

    if spec.shadow_version:  # the shadow is measured, never chosen: same events, same metrics
        vector_scorers(spec.shadow_model, spec.shadow_version)
    if spec.model_version:
        knn_scores = vector_scorers(spec.model, spec.model_version)
        if embedder is not None:  # the default scorer, fitted as `fit` fits it
            t = time.perf_counter()
            default = fit_default_scorer(embedder, b_texts, b_weights, b_events,
                                         quantile=spec.quantile)
            sur_scores = window_surprisal(embedder, t_texts) / default.surprisal_threshold
            record(f"{spec.model}-surprisal", sur_scores, calibrated=True,
                   seconds=time.perf_counter() - t)
            record(f"{spec.model}-max-knn-surprisal", np.maximum(knn_scores, sur_scores), calibrated=True)
            t = time.perf_counter()
            context_scores = score_events(default.context, test.event_ids, test.fields,
                                          test.texts, sur_scores[per_event])
            record(f"{spec.model}-context", event_scores=context_scores, calibrated=True,
                   seconds=time.perf_counter() - t)
            incidents = incident_metrics(spec.model, test, context_scores, is_attack,
                                         default.context)
            context_rows(((f"{spec.model}-surprisal+novelty", {"lineage_weight": 0.0}),
                          (f"{spec.model}-surprisal+lineage", {"novelty_weight": 0.0})),
                         default.bits / default.surprisal_threshold, sur_scores)
    if spec.anchors:
        from plugin.detect.anchors import Drain3Rarity, TfidfKMeans, TfidfNearestNeighbor

        for name, cls in (("tfidf-1nn", TfidfNearestNeighbor), ("tfidf-kmeans", TfidfKMeans)):
            t = time.perf_counter()
            sc = cls()
            sc.fit(b_texts)
            tfidf_scores = np.asarray(sc.score(t_texts))
            record(name, tfidf_scores, seconds=time.perf_counter() - t)
            if name == "tfidf-1nn" and spec.context_anchor:
                # the same context terms on the anchor's content score: what the context adds
                # alone, and whether the BLT's content score still earns its place
                t = time.perf_counter()
                b_content, threshold = _heldout_content(TfidfNearestNeighbor, b_texts, b_weights,
                                                        spec.quantile)
                context_rows(((f"{name}+context", {}),), b_content, tfidf_scores / threshold,
                             time.perf_counter() - t)
        try:
            t = time.perf_counter()
            d3 = Drain3Rarity()
            d3.fit([base.texts[i] for i in keep])
            record("drain3-rarity", event_scores=np.asarray(d3.score(test.texts)),
                   seconds=time.perf_counter() - t)
        except ImportError as exc:
            log.warning("drain3_unavailable", error=str(exc))
    if record_labels:
        _keep(store, spec, test.keys, is_attack, results)
    return {
        "baseline_events": len(keep),
        "baseline_dropped_attack_events": len(dirty),
        "baseline_distinct_texts": len(b_hashes),
        "test_events": len(test.keys),
        "test_distinct_texts": len(t_hashes),
        "attack_events": int(is_attack.sum()),
        "scorers": results,
        "incidents": incidents,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def incident_metrics(model: str, test: _Events, scores: np.ndarray, is_attack: np.ndarray,
                     context=None, window=INCIDENT_WINDOW, top: int = 5) -> dict:
    """The test events grouped into incidents from their event scores (outlier: score >= 1.0),
    judged as an analyst reads them, best first: the rank of the first incident holding attack
    events (None: no incident does), the share of attack events inside the top three
    incidents, and how many incidents, alerts (distinct outlier texts) and outlier events there
    are to read. One grouper over the whole capture, large enough to forget nothing."""
    n = len(test.keys)
    grouper = IncidentGrouper(model, context, window, max_processes=max(MAX_PROCESSES, n),
                              max_pending=max(MAX_PENDING, n), max_open=max(MAX_OPEN, n))
    flagged = np.asarray(scores) >= 1.0
    grouped = grouper.add(
        observe(test.keys[i], test.computers[i], test.times[i], test.event_ids[i],
                test.fields[i], test.texts[i], float(scores[i]), bool(flagged[i]),
                alert_id=test.hashes[i] if flagged[i] else None)
        for i in range(n))
    members: dict[str, set[str]] = {}
    for key, iid in grouped.links.items():
        members.setdefault(iid, set()).add(key)
    attack = {k for k, a in zip(test.keys, is_attack) if a}
    order = ranked(grouped.incidents.values())
    rank = next((r + 1 for r, inc in enumerate(order) if members[inc.incident_id] & attack), None)
    in_top3 = set().union(*(members[inc.incident_id] for inc in order[:3])) if order else set()
    return {
        "incidents": len(order),
        "alerts": len({h for h, f in zip(test.hashes, flagged) if f}),
        "outlier_events": int(flagged.sum()),
        "first_attack_incident_rank": rank,
        "attack_share_top3": round(len(attack & in_top3) / len(attack), 4) if attack else None,
        "attack_events_in_incidents": len(attack & set(grouped.links)),
        "window_minutes": window.total_seconds() / 60,
        "top": [{"root_image": inc.root_image, "computer": inc.computer,
                 "score": round(inc.score, 3), "events": inc.events, "outliers": inc.outliers, "alerts": len(inc.alert_ids),
                 "attack_events": len(members[inc.incident_id] & attack),
                 # what the ranking score is made of (`Incident.score`)
                 "max_score": round(inc.max_score, 3), "distinct_texts": inc.distinct_texts,
                 "event_types": sorted(inc.event_types), "root_novel": inc.root_novel}
                for inc in order[:top]],
    }


def format_table(res: dict) -> str:
    cols = ("roc_auc", "average_precision", "tpr_at_1pct_fpr", "flagged_share_ordinary")
    lines = [f"baseline {res['baseline_events']} events ({res['baseline_dropped_attack_events']} "
             f"attack-tree events dropped); test {res['test_events']} events, "
             f"{res['attack_events']} attack",
             f"{'scorer':16} " + " ".join(f"{c:>22}" for c in cols)]
    for name, m in res["scorers"].items():
        vals = []
        for c in cols:
            v = m.get(c)
            vals.append(f"{v:22.3f}" if isinstance(v, (int, float)) else f"{'-':>22}")
        lines.append(f"{name:16} " + " ".join(vals))
    inc = res.get("incidents")
    if inc:
        share = inc["attack_share_top3"]
        lines.append(f"incidents: {inc['incidents']} (from {inc['alerts']} alerts, "
                     f"{inc['outlier_events']} outlier events); first with attack events at rank "
                     f"{inc['first_attack_incident_rank'] or '-'}; attack events in the top three: "
                     + (f"{share:.1%}" if share is not None else "-"))
    return "\n".join(lines)


