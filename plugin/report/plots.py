"""Figures of the comparison report: one PNG per question, every model in one figure.

Why ``matplotlib.figure.Figure`` on an Agg canvas rather than ``pyplot``: pyplot keeps global
state (a current figure, a chosen backend) that a server process or a test run would share;
a bare Figure needs no display, changes no global backend and is freed with its last reference.
Every figure has a title, axis labels and a legend, and each model keeps one colour across all
figures (BLT blue, Linformer orange), so a reader can match curves between them at a glance.
PNG metadata is stripped of matplotlib's "Software" tag, so the report carries no URL at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from plugin.report.names import display_name

__all__ = [
    "cosine_histogram",
    "model_color",
    "pca_cumulative",
    "pca_scree",
    "roc_curves",
    "score_scatter",
    "silhouette_curves",
]

_COLORS = {"blt": "#1f77b4", "linformer": "#ff7f0e"}
_EXTRA = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_SIZE = (7.5, 4.4)
_DPI = 110


def model_color(model: str) -> str:
    """A fixed colour per model, the same in every figure."""
    if model in _COLORS:
        return _COLORS[model]
    return _EXTRA[sum(map(ord, model)) % len(_EXTRA)]


def _figure(size: tuple[float, float] = _SIZE) -> tuple[Figure, object]:
    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def cosine_histogram(cos: Mapping[str, np.ndarray], path: Path) -> Path:
    """Overlaid histograms of pair cosines (share of pairs per bin), medians dashed."""
    fig, ax = _figure()
    lo = min(-0.05, *(float(c.min()) for c in cos.values()))
    bins = np.linspace(max(-1.0, np.floor(lo * 20) / 20), 1.0, 81)
    for m, c in cos.items():
        color = model_color(m)
        weights = np.full(c.size, 1.0 / c.size)
        ax.hist(c, bins=bins, weights=weights, color=color, alpha=0.35)
        ax.hist(c, bins=bins, weights=weights, histtype="step", color=color, linewidth=1.4,
                label=f"{display_name(m)} (median {np.median(c):.2f}, dashed)")
        ax.axvline(float(np.median(c)), color=color, linestyle="--", linewidth=1.2)
    ax.axvline(0.9, color="0.3", linestyle=":", linewidth=1.2, label="cosine 0.9 (near-duplicate)")
    n = max(c.size for c in cos.values())
    ax.set_title(f"Cosine similarity of {n:,} random event pairs")
    ax.set_xlabel("cosine similarity of the two events' vectors")
    ax.set_ylabel("share of pairs")
    ax.legend(loc="best")
    return _save(fig, path)


def silhouette_curves(sil: Mapping[str, dict], path: Path) -> Path:
    """Silhouette against k per model, the best k ringed."""
    fig, ax = _figure()
    for m, s in sil.items():
        ks = [k for k, v in zip(s["k"], s["silhouette"]) if v is not None]
        vs = [v for v in s["silhouette"] if v is not None]
        color = model_color(m)
        ax.plot(ks, vs, marker="o", color=color, label=f"{display_name(m)} (best k={s['best_k']})")
        if s["best_k"] is not None:
            ax.plot([s["best_k"]], [s["best_silhouette"]], marker="o", markersize=14,
                    markerfacecolor="none", markeredgecolor=color, markeredgewidth=2)
    all_k = sorted({k for s in sil.values() for k in s["k"]})
    if all_k:
        ax.set_xticks(all_k)
    n = max(s["events"] for s in sil.values())
    ax.set_title(f"KMeans silhouette by number of clusters ({n:,} sampled events)")
    ax.set_xlabel("k (number of MiniBatchKMeans clusters)")
    ax.set_ylabel("silhouette (cosine; higher = better separated)")
    ax.legend(loc="best")
    return _save(fig, path)


def pca_cumulative(pca: Mapping[str, dict], path: Path) -> Path:
    """Cumulative explained variance against components, with the 90% and 95% marks."""
    fig, ax = _figure()
    widest = 1
    for m, p in pca.items():
        cum = np.asarray(p["cumulative"], dtype=np.float64)
        x = np.arange(1, cum.size + 1)
        widest = max(widest, cum.size)
        color = model_color(m)
        ax.plot(x, cum, color=color, linewidth=1.8,
                label=f"{display_name(m)} (90%: {p['components_90']}, 95%: {p['components_95']} "
                      f"of {p['dim']})")
        for key in ("components_90", "components_95"):
            if p[key]:
                ax.plot([p[key]], [cum[p[key] - 1]], marker="o", color=color)
    ax.axhline(0.90, color="0.4", linestyle="--", linewidth=1, label="90% of variance")
    ax.axhline(0.95, color="0.4", linestyle=":", linewidth=1, label="95% of variance")
    scale = ""
    if widest > 40:  # wide vectors: the interesting part is the first few components
        ax.set_xscale("log")
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if t <= widest]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        scale = " (log scale)"
    ax.set_xlim(1, widest)
    ax.set_ylim(0, 1.01)
    ax.set_title("PCA: cumulative explained variance")
    ax.set_xlabel(f"number of principal components{scale}")
    ax.set_ylabel("share of total variance explained")
    ax.legend(loc="lower right")
    return _save(fig, path)


def pca_scree(pca: Mapping[str, dict], path: Path) -> Path:
    """Explained variance of each of the first components (the scree plot)."""
    fig, ax = _figure()
    for m, p in pca.items():
        r = np.asarray(p["explained_variance_ratio"], dtype=np.float64)
        ax.plot(np.arange(1, r.size + 1), r, marker="o", color=model_color(m),
                label=(f"{display_name(m)} (first component {r[0]:.0%})" if r.size
                       else display_name(m)))
    n = max(len(p["explained_variance_ratio"]) for p in pca.values())
    ax.set_xticks(range(1, n + 1))
    ax.set_title(f"PCA scree plot: the first {n} components")
    ax.set_xlabel("principal component")
    ax.set_ylabel("share of variance explained")
    ax.legend(loc="upper right")
    return _save(fig, path)


def score_scatter(arrays: Mapping[str, np.ndarray], primary: str, shadow: str, path: Path,
                  seed: int = 0, max_points: int = 6000) -> Path:
    """Primary score against shadow score per event, coloured by which model flags it.

    Log axes when the scores span more than two decades (they usually do: most events sit
    near 0, outliers at several times the threshold); scores are clipped at a small floor so
    events with score 0 (an exact baseline text) stay visible.
    """
    sa, sb = np.asarray(arrays["primary"], np.float64), np.asarray(arrays["shadow"], np.float64)
    oa, ob = np.asarray(arrays["primary_outlier"], bool), np.asarray(arrays["shadow_outlier"], bool)
    n = sa.size
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    sa, sb, oa, ob = sa[idx], sb[idx], oa[idx], ob[idx]
    pos = np.concatenate([sa[sa > 0], sb[sb > 0]])
    use_log = pos.size > 0 and pos.max() / max(pos.min(), 1e-12) > 100
    floor = None
    if use_log:
        floor = max(float(np.quantile(pos, 0.01)) / 2, 1e-4)
        sa, sb = np.maximum(sa, floor), np.maximum(sb, floor)
    fig, ax = _figure(size=(9.0, 4.8))  # room for the legend beside the points
    pn, sn = display_name(primary), display_name(shadow)
    groups = (
        (~oa & ~ob, "#9e9e9e", "neither flags", 6),
        (oa & ~ob, model_color(primary), f"only {pn} flags", 14),
        (~oa & ob, model_color(shadow), f"only {sn} flags", 14),
        (oa & ob, "#d62728", "both flag", 18),
    )
    for mask, color, label, size in groups:
        ax.scatter(sa[mask], sb[mask], s=size, c=color, alpha=0.55, linewidths=0,
                   label=f"{label} ({int(mask.sum()):,})")
    ax.axvline(1.0, color="0.3", linestyle="--", linewidth=1, label="outlier threshold (score 1)")
    ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
    if use_log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    shown = f"{len(idx):,} of {n:,}" if len(idx) < n else f"{n:,}"
    ax.set_title(f"Outlier score per event: {pn} vs {sn} ({shown} events)")
    clip = f", log; below {floor:.1g} drawn at {floor:.1g}" if floor else ""
    ax.set_xlabel(f"{pn} score (1 = outlier threshold{clip})")
    ax.set_ylabel(f"{sn} score")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=1.5,
              title="counts among points shown" if len(idx) < n else None, title_fontsize=8)
    return _save(fig, path)


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """ROC curve per model over the labelled events it scored."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _figure()
    for m, (score, is_attack) in curves.items():
        score = np.nan_to_num(np.asarray(score, np.float64), nan=-np.inf)  # failed = least anomalous
        big = np.finfo(np.float64).max
        score = np.nan_to_num(score, posinf=big, neginf=-big)
        fpr, tpr, _ = roc_curve(is_attack, score)
        auc = roc_auc_score(is_attack, score)
        ax.plot(fpr, tpr, color=model_color(m), linewidth=1.8,
                label=f"{display_name(m)} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", label="chance")
    ax.axvline(0.01, color="0.3", linestyle="--", linewidth=1, label="1% false positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("Detection on labelled events: ROC curve")
    ax.set_xlabel("false positive rate (ordinary events flagged)")
    ax.set_ylabel("true positive rate (attack events found)")
    ax.legend(loc="lower right")
    return _save(fig, path)
