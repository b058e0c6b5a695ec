"""`report.html`: the comparison summary as one self-contained page.

Why self-contained: the report is read on analysts' machines, attached to tickets and opened
offline, often far from the database. So the figures are embedded as base64 data URIs, the
style is inline, and the page loads nothing from anywhere (no scripts, fonts or links).
Everything shown is rendered from the summary dict (``summary.json``), and every stored
string (paths, model names, eval specs) is HTML-escaped: eval specs and labels' sources come
from user input and event-derived paths.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from plugin.report.names import display_name, eval_scorers

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 64rem; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.interp { background: #f3f7fb; border-left: 4px solid #1f77b4; padding: 0.5rem 0.8rem; }
p.missing { background: #fff6e5; border-left: 4px solid #e69500; padding: 0.5rem 0.8rem; }
p.sub { color: #666; margin-top: 0; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85rem; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return _e(value)


def _pct(value: Any) -> str:
    return "&mdash;" if value is None else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """Rows of already-formatted HTML cells (format with _num/_pct/_e first)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(out_dir: Path, name: str | None, caption: str) -> str:
    if not name:
        return ""
    data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)} ({_e(name)})</figcaption></figure>")


def _interp(text: str | None) -> str:
    return f'<p class="interp">{_e(text)}</p>' if text else ""


def _missing(reason: str | None) -> str:
    return f'<p class="missing">Not available: {_e(reason)}.</p>' if reason else ""


def _header(s: dict) -> str:
    models = s["models"]
    rows = [("database", _e(s["db"])),
            ("generated", _e(s["generated"][:19].replace("T", " ")) + " UTC"),
            ("sysmon-blt", _e(s["tool_version"]) + f" (schema version {_e(s['schema_version'])})"),
            ("events in the database", _num(s["events"]))]
    for m, info in models.items():
        others = [v for v in info["versions"] if v != info["version"]]
        extra = f"; other stored versions: {_e(', '.join(others))}" if others else ""
        rows.append((f"{display_name(m)} ({info['role']})",
                     (f"model <code>{_e(m)}</code>, version <code>{_e(info['version'])}</code>, "
                      f"{info['dim']} dimensions; vectors for {info['texts']:,} distinct texts "
                      f"covering {info['events']:,} events{extra}")))
    for m, why in s["absent"].items():
        rows.append((f"{display_name(m)}", f"<strong>absent</strong>: {_e(why)}"))
    smp = s["sample"]
    p = s["params"]
    if smp["shared"]:
        m0 = next(iter(models))
        what = (f"{smp['events'][m0]:,} events drawn (seed {p['seed']}) from the "
                f"{smp['population'][m0]:,} whose text has a vector of "
                + ("every compared model; the same events and pairs for each model"
                   if len(models) > 1 else "the model"))
    else:
        what = "; ".join(f"{display_name(m)}: {n:,} of {smp['population'][m]:,} events"
                         for m, n in smp["events"].items()) + f" (seed {p['seed']}), sampled separately"
    rows.append(("event sample", what))
    pairs = smp.get("pairs") or {}
    km = smp.get("kmeans_events") or {}
    sil = smp.get("silhouette_events") or {}
    rows.append(("sizes",
                 f"{max(pairs.values(), default=0):,} random event pairs; KMeans on "
                 f"{max(km.values(), default=0):,} events for k = {p['k_range'][0]}..{p['k_range'][-1]}"
                 f" with silhouettes over {max(sil.values(), default=0):,}; PCA on the whole sample"
                 if p["k_range"] else f"{max(pairs.values(), default=0):,} random event pairs"))
    rows.append(("report time", f"{s['seconds']:.1f} s"))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>What was compared</h2><table><tbody>{body}</tbody></table>"


def _summary_table(s: dict) -> str:
    models = list(s["models"])
    cos, sil, pca = s["cosine"] or {}, s["silhouette"] or {}, s["pca"] or {}
    det = s["detection"] or {}
    thr = (s["throughput"] or {}).get("latest", {})
    agree = {k: v for k, v in (s["agreement"] or {}).items() if v}

    def row(label: str, fn) -> list[str]:
        return [_e(label)] + [fn(m) for m in models]

    rows = [
        row("median cosine of random event pairs", lambda m: _num((cos.get(m) or {}).get("median"))),
        row("pairs with cosine > 0.9", lambda m: _pct((cos.get(m) or {}).get("share_above_0_9"))),
        row("best k (silhouette)",
            lambda m: (f"{sil[m]['best_k']} ({sil[m]['best_silhouette']:.3f})"
                       if sil.get(m) and sil[m]["best_k"] is not None else "&mdash;")),
        row("PCA components for 90% / 95% variance",
            lambda m: (f"{pca[m]['components_90']} / {pca[m]['components_95']} of {pca[m]['dim']}"
                       if m in pca else "&mdash;")),
    ]
    if agree:
        def flagged(m: str) -> str:
            for a in agree.values():
                if m in a["outliers"]:
                    return f"{a['outliers'][m]:,} of {a['events']:,}"
            return "&mdash;"
        rows.append(row("outliers among events both models scored", flagged))
    if det:
        rows.append(row("ROC-AUC on labelled events", lambda m: _num((det.get(m) or {}).get("roc_auc"))))
        rows.append(row("TPR at 1% FPR", lambda m: _num((det.get(m) or {}).get("tpr_at_1pct_fpr"))))
    if thr:
        rows.append(row("texts/s embedded (latest run)",
                        lambda m: _num((thr.get(m) or {}).get("texts_per_second"), 1)))
    out = _table(["measure"] + [display_name(m) for m in models], rows)
    if agree:
        arow = [[_e(f"{display_name(a['primary'])} vs {display_name(a['shadow'])}"), _num(a["events"]),
                 _num(a["adjusted_rand_index"]), _num(a["cohen_kappa"]), _num(a["spearman"])]
                for a in agree.values()]
        out += _table(["agreement", "events", "adjusted Rand index (clusters)",
                       "Cohen's kappa (outlier flags)", "Spearman (scores)"], arow)
    gaps = [k for k in s["missing"] if ":" not in k]
    if gaps:
        out += (f'<p class="missing">Sections without data: {_e(", ".join(gaps))} '
                "(each section below says why).</p>")
    return "<h2>Summary</h2>" + out


def _cosine(s: dict, out_dir: Path) -> str:
    html_ = "<h2>(a) Cosine similarity of random event pairs</h2>"
    html_ += ('<p class="sub">Pairs of events (not of distinct texts) drawn from the sample; a '
              "low, wide distribution means the model tells unrelated events apart.</p>")
    if not s["cosine"]:
        return html_ + _missing(s["missing"].get("cosine"))
    html_ += _interp(s["interpretation"].get("cosine"))
    rows = [[_e(display_name(m)), _num(c["pairs"]), _num(c["mean"]), _num(c["median"]),
             _num(c["std"]), _num(c["p5"]), _num(c["p95"]), _pct(c["share_above_0_9"])]
            for m, c in s["cosine"].items()]
    html_ += _table(["model", "pairs", "mean", "median", "std", "p5", "p95", "cosine > 0.9"], rows)
    return html_ + _img(out_dir, s["figures"].get("cosine"), "Histogram of pair cosines per model")


def _silhouette(s: dict, out_dir: Path) -> str:
    html_ = "<h2>(b) KMeans silhouette, k = 2..15</h2>"
    html_ += ('<p class="sub">MiniBatchKMeans with a fixed seed on the unit vectors; silhouette '
              "with cosine distance on a subsample. Higher means tighter, better separated clusters."
              "</p>")
    if not s["silhouette"]:
        return html_ + _missing(s["missing"].get("silhouette"))
    html_ += _interp(s["interpretation"].get("silhouette"))
    ks = next(iter(s["silhouette"].values()))["k"]
    rows = [[_e(display_name(m))] + [_num(v, 2) for v in c["silhouette"]]
            for m, c in s["silhouette"].items()]
    html_ += _table(["k"] + [str(k) for k in ks], rows)
    return html_ + _img(out_dir, s["figures"].get("silhouette"), "Silhouette against k per model")


def _pca(s: dict, out_dir: Path) -> str:
    html_ = "<h2>(c) PCA: how many directions carry the variance</h2>"
    if not s["pca"]:
        return html_ + _missing(s["missing"].get("pca"))
    html_ += _interp(s["interpretation"].get("pca"))
    rows = [[_e(display_name(m)), _num(p["dim"]), _num(p["components_90"]), _num(p["components_95"]),
             _pct(p["explained_variance_ratio"][0] if p["explained_variance_ratio"] else None),
             _pct(p["cumulative"][min(9, len(p["cumulative"]) - 1)])]
            for m, p in s["pca"].items()]
    html_ += _table(["model", "dimensions", "components for 90%", "components for 95%",
                     "first component", "first 10 components"], rows)
    html_ += _img(out_dir, s["figures"].get("pca_cumulative"), "Cumulative explained variance")
    return html_ + _img(out_dir, s["figures"].get("pca_scree"), "Scree plot, first 20 components")


def _agreement(s: dict, out_dir: Path) -> str:
    html_ = "<h2>(d) Agreement between the primary and the shadow</h2>"
    html_ += ('<p class="sub">Over the events both models scored (the <code>assignments</code> '
              "table): adjusted Rand index of their clusters, Cohen's kappa of their outlier flags, "
              "Spearman correlation of their calibrated scores (1.0 is each model's threshold)."
              "</p>")
    if not s["agreement"]:
        return html_ + _missing(s["missing"].get("agreement"))
    for sh, a in s["agreement"].items():
        if not a:
            html_ += _missing(s["missing"].get(f"agreement:{sh}"))
            continue
        p, q = a["primary"], a["shadow"]
        if len(s["agreement"]) > 1:
            html_ += f"<h3>{_e(display_name(p))} vs {_e(display_name(q))}</h3>"
        html_ += _interp(s["interpretation"].get(f"agreement:{sh}"))
        html_ += _table(["measure", "value"], [
            ["events scored by both", _num(a["events"])],
            [_e(f"events scored by {display_name(p)} / {display_name(q)}"),
             f"{a['assigned_events'][p]:,} / {a['assigned_events'][q]:,}"],
            ["clusters used", f"{a['clusters'][p]:,} / {a['clusters'][q]:,}"],
            ["fit versions", _e(f"{a['fit_versions'][p]} / {a['fit_versions'][q]}")],
            ["adjusted Rand index", _num(a["adjusted_rand_index"])],
            ["Cohen's kappa (is_outlier)", _num(a["cohen_kappa"])],
            ["Spearman (score)", _num(a["spearman"])],
            [_e(f"outliers of all {display_name(p)} / {display_name(q)} assignments"),
             f"{a['outliers_all_assigned'][p]:,} / {a['outliers_all_assigned'][q]:,}"],
        ])
        html_ += _table(["", f"{display_name(q)} flags", f"{display_name(q)} does not"], [
            [f"{_e(display_name(p))} flags", _num(a["both_outlier"]), _num(a["primary_only_outlier"])],
            [f"{_e(display_name(p))} does not", _num(a["shadow_only_outlier"]),
             _num(a["neither_outlier"])],
        ])
        html_ += _img(out_dir, s["figures"].get(f"scores:{sh}"), "Scores per event, both models")
    return html_


def _detection(s: dict, out_dir: Path) -> str:
    html_ = "<h2>(e) Detection quality</h2>"
    html_ += "<h3>On the labelled events of this database</h3>"
    if not s["detection"]:
        html_ += _missing(s["missing"].get("detection"))
    else:
        html_ += _interp(s["interpretation"].get("detection"))
        cols = ("n_attack", "n_ordinary", "roc_auc", "average_precision", "tpr_at_1pct_fpr",
                "flagged_share_ordinary", "flagged_share_attack")
        rows = []
        for m, d in s["detection"].items():
            if d is None:
                rows.append([_e(display_name(m))] + ["&mdash;"] * len(cols))
            else:
                rows.append([_e(display_name(m))] + [_num(d.get(c)) for c in cols])
        html_ += _table(["model", "attack events", "ordinary events", "ROC-AUC", "average precision",
                         "TPR at 1% FPR", "ordinary flagged", "attack flagged"], rows)
        html_ += _img(out_dir, s["figures"].get("roc"), "ROC curves on labelled events")
    html_ += "<h3>Stored <code>eval</code> runs</h3>"
    evals = s["evaluations"]
    if not evals:
        return html_ + _missing(s["missing"].get("evaluations"))
    html_ += _interp(s["interpretation"].get("evaluations"))
    shown = evals[-10:]
    if len(evals) > len(shown):
        html_ += f"<p>The latest {len(shown)} of {len(evals)} runs; summary.json has all.</p>"
    for ev in reversed(shown):
        scorers = eval_scorers(ev["results"])
        spec = ev["spec"]
        spec_txt = ", ".join(f"{k}: {v}" for k, v in spec.items()) if isinstance(spec, dict) else spec
        when = str(ev["created"])[:19].replace("T", " ")
        html_ += f"<p><strong>{_e(when)} UTC</strong> &mdash; {_e(spec_txt)}</p>"
        if not scorers:
            html_ += f"<pre>{_e(ev['results'])}</pre>"
            continue
        cols: list[str] = []
        for metrics in scorers.values():
            cols += [c for c in metrics if c not in cols]
        rows = [[_e(name)] + [_num(metrics.get(c)) for c in cols] for name, metrics in scorers.items()]
        html_ += _table(["scorer"] + cols, rows)
    return html_


def _throughput(s: dict) -> str:
    html_ = "<h2>(f) Throughput recorded during imports</h2>"
    if not s["throughput"]:
        return html_ + _missing(s["missing"].get("throughput"))
    html_ += _interp(s["interpretation"].get("throughput"))
    cols = ("run_started", "command", "model", "model_version", "events", "texts_embedded",
            "embed_seconds", "texts_per_second", "run_seconds", "events_per_second")

    digits = {"embed_seconds": 3, "run_seconds": 2}

    def cells(r: dict) -> list[str]:
        return [_e(str(r.get(c))[:19].replace("T", " ")) if c == "run_started" else
                _e(display_name(r.get(c))) if c == "model" else _num(r.get(c), digits.get(c, 1))
                for c in cols]

    html_ += "<h3>Latest run per model</h3>"
    html_ += _table(cols, [cells(r) for r in s["throughput"]["latest"].values()], numeric_from=4)
    runs = s["throughput"]["runs"]
    shown = runs[-50:]
    title = "All runs" if len(shown) == len(runs) else f"The latest {len(shown)} of {len(runs)} runs"
    html_ += f"<h3>{_e(title)}</h3>"
    return html_ + _table(cols, [cells(r) for r in reversed(shown)], numeric_from=4)


def _method(s: dict) -> str:
    p = s["params"]
    return (
        "<h2>How these numbers were computed</h2><ul>"
        f"<li>Events are sampled with seed {p['seed']} from those whose canonical text has a stored "
        "vector; each event takes its text's vector (L2-normalized). Statistics are over events, "
        "so a frequent text weighs as often as it occurs.</li>"
        f"<li>Pairs: {p['pairs']:,} pairs of two different sampled events, the same pairs for every "
        "model.</li>"
        "<li>Silhouette: scikit-learn MiniBatchKMeans (fixed seed, 3 initializations) on a uniform "
        "subsample, <code>silhouette_score</code> with cosine distance on a further subsample.</li>"
        "<li>PCA: scikit-learn PCA (full SVD) on the sampled vectors.</li>"
        "<li>Agreement: all events with an assignment from both models; adjusted Rand index of "
        "cluster ids, Cohen's kappa of is_outlier, Spearman rank correlation of scores.</li>"
        "<li>Detection: <code>labels</code> joined with each model's assignment score, with the same "
        "metric definitions as <code>sysmon-blt eval</code>.</li>"
        "<li>Every number here is in <code>summary.json</code> beside this page.</li></ul>")


def render_html(summary: dict, out_dir: Path) -> str:
    """The whole page, figures from ``out_dir`` inlined."""
    out_dir = Path(out_dir)
    names = " vs ".join(display_name(m) for m in summary["models"])
    absent = "".join(f" ({display_name(m)} absent)" for m in summary["absent"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sysmon-blt report: {_e(names)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Embedding comparison: {_e(names)}{_e(absent)}</h1>",
        (f'<p class="sub">{_e(summary["title"])}: the primary model decides alerts; the shadow '
         "embeds the same traffic side by side and never does. This page reproduces the BLT vs "
         "BPE+Linformer comparison of Sysmon message embeddings on the events of this database.</p>"),
        _header(summary),
        _summary_table(summary),
        _cosine(summary, out_dir),
        _silhouette(summary, out_dir),
        _pca(summary, out_dir),
        _agreement(summary, out_dir),
        _detection(summary, out_dir),
        _throughput(summary),
        _method(summary),
        "</body></html>",
    ]
    return "\n".join(parts)
