"""The report's interpretations: one to three plain sentences per section, from its numbers.

Why sentences: most readers of the report are analysts deciding whether the shadow model is
worth promoting, not statisticians; each sentence says which model does better on a question
and how strongly, in words tied to the usual scales (chance, weak, strong). They are rendered
from the summary's numbers alone, so the page and ``summary.json`` never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from plugin.report.names import display_name, eval_scorers

__all__ = [
    "interpret_agreement",
    "interpret_cosine",
    "interpret_detection",
    "interpret_evaluations",
    "interpret_pca",
    "interpret_silhouette",
    "interpret_throughput",
]


def _pct(x: float) -> str:
    """A share as a percentage, with a second decimal where 99.5%+ would round to 100%."""
    return f"{100 * x:.1f}%" if x < 0.995 or x == 1 else f"{100 * x:.2f}%"


def _vs(values: dict[str, Any], fmt: Callable[[Any], str]) -> str:
    """'0.41 for BLT vs 0.78 for Linformer'."""
    return " vs ".join(f"{fmt(v)} for {display_name(m)}" for m, v in values.items())


def interpret_cosine(stats: dict[str, dict], same_text_share: float | None) -> str:
    """Which model spreads random event pairs further apart; how many pairs are near-duplicates."""
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


def interpret_silhouette(sil: dict[str, dict]) -> str:
    """Each model's best k, whether the curve still rises at the largest k, which separates best."""
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


def interpret_pca(pca: dict[str, dict]) -> str:
    """How many of its dimensions each model needs for 90% and 95% of the variance."""
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
    """The word of the first cut above ``x`` (the last word beyond them all)."""
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


def interpret_agreement(a: dict) -> str:
    """How strongly primary and shadow agree on clusters, outlier flags and scores."""
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


def interpret_detection(det: dict[str, dict | None]) -> str:
    """Each model's detection metrics on the labelled events, and which ranks attacks best."""
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


def interpret_evaluations(evals: list[dict]) -> str:
    """How many stored `eval` runs there are and the best scorer of the latest."""
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


def interpret_throughput(latest: dict[str, dict]) -> str:
    """Each model's embedding speed in its latest run, and how many times faster the fastest is."""
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


