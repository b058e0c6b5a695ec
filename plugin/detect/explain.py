"""Why an event stands out, in words an analyst reads without looking at vectors.

For an outlier: its nearest cluster and that cluster's medoid (a typical text; empty for shipped
reference clusters, which carry no event text), the score against the threshold, the nearest
baseline texts, and the most surprising byte spans according to the entropy model: the part of
a command line or path no baseline event resembles. Process lineage is added by `enrich`, which
can walk the stored events.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import structlog

from plugin.models.blt.surprisal import WINDOW, window_means

log = structlog.get_logger(__name__)


def surprising_spans(text: str, surprisal: np.ndarray, top: int = 3) -> list[dict]:
    """The `top` non-overlapping windows of highest mean surprisal (bits per byte)."""
    data = text.encode("utf-8")[: len(surprisal)]
    n = len(data)
    if n == 0:
        return []
    w = min(WINDOW, n)
    means = window_means(surprisal[:n], WINDOW)
    order = np.argsort(-means, kind="stable")
    taken: list[tuple[int, int]] = []
    out = []
    for start in order:
        s, e = int(start), int(start) + w
        if any(s < te and ts_ < e for ts_, te in taken):
            continue
        # widen to whole words so the span reads naturally
        while s > 0 and data[s - 1:s] not in (b" ", b"\\", b"="):
            s -= 1
        while e < n and data[e:e + 1] not in (b" ", b"\\"):
            e += 1
        taken.append((s, e))
        out.append({"text": data[s:e].decode("utf-8", "replace"), "start": s, "end": e,
                    "bits_per_byte": round(float(means[start]), 2)})
        if len(out) >= top:
            break
    return out


def _surprisal(embedder, text: str, fetched: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The text's per-byte surprisal: from the pass that just embedded it when there was one
    (the same values; an outlier is usually a new text), else from the batch's prefetch, else a
    pass of its own."""
    known = getattr(embedder, "last_surprisal", {}).get(text)
    if known is None and fetched:
        known = fetched.get(text)
    return known if known is not None else embedder.surprisal(text)


def make_explainer(loaded, embedder, baseline_text: Callable[[list[str]], dict[str, str]]):
    """An explain(text, TextScore) -> dict closure for the score stage, with ``prefetch(texts)``
    to run the entropy model once for the texts a batch is about to explain (for the one thread
    that scores; another thread's explanations simply run their own pass)."""
    fetched: dict[str, np.ndarray] = {}

    def prefetch(texts: list[str]) -> None:
        fetched.clear()
        known = getattr(embedder, "last_surprisal", {})
        todo = [t for t in texts if known.get(t) is None]
        if not todo or not hasattr(embedder, "byte_surprisal"):
            return
        try:
            fetched.update(zip(todo, embedder.byte_surprisal(todo)))
        except Exception as exc:  # each explanation then tries alone, and says so if it fails
            log.warning("explanation_prefetch_failed", texts=len(todo), error=str(exc))

    def explain(text: str, ts, earlier: dict | None = None) -> dict:
        """``earlier``: an explanation of the same text under another calibration (the settle
        pass's first walk): its text-only parts (nearest baseline texts, surprising spans: an
        entropy-model pass) are taken as they are."""
        d = ts.detail or {}
        out: dict = {
            "score": round(ts.score, 4), "threshold": 1.0, "is_outlier": ts.is_outlier,
            "fit_version": loaded.version, "fit_origin": loaded.origin,
            "nearest_cluster": ts.cluster,
            "medoid": loaded.medoids[ts.cluster] if 0 <= ts.cluster < len(loaded.medoids) else "",
            "measures": d,
        }
        if earlier is not None and "surprising_spans" in earlier:
            for part in ("nearest_baseline", "surprising_spans"):
                if part in earlier:
                    out[part] = earlier[part]
            return out
        idx = d.get("nearest_index")
        if idx is not None and loaded.baseline_hashes:
            ids = [idx] if isinstance(idx, int) else list(idx)
            hashes = [loaded.baseline_hashes[i] for i in ids if 0 <= i < len(loaded.baseline_hashes)]
            texts = baseline_text(hashes)
            out["nearest_baseline"] = [texts.get(h, "") for h in hashes]
        try:
            out["surprising_spans"] = surprising_spans(text, _surprisal(embedder, text, fetched))
        except Exception as exc:  # an explanation must never cost the event
            out["surprising_spans_error"] = str(exc)
        return out

    explain.prefetch = prefetch
    return explain


def reasons(explanation: dict) -> list[str]:
    """An explanation in sentences, the largest contribution to the score first: what an analyst
    reads before the numbers (`alerts show`, the triage page)."""
    ctx = explanation.get("context") or {}
    m = explanation.get("measures") or {}
    parts: list[tuple[float, str]] = []
    content = ctx.get("content_score", explanation.get("score"))
    if content is not None:
        if m.get("scorer") == "surprisal" and m.get("window_bits_per_byte") is not None:
            why = (f"its bytes are unusual to the entropy model: {m['window_bits_per_byte']:.2f} "
                   f"bits/byte in its strangest stretch, where ordinary events stay under "
                   f"{m.get('surprisal_threshold', 0):.2f}")
        else:
            why = "its text is far from every baseline text"
        parts.append((float(content), f"{why} (content score {float(content):.2f})"))
    novel = ctx.get("novel_images") or []
    if novel:
        weight = float(ctx.get("novelty_weight", 1.0))
        what = ("it runs a binary no earlier event of this case named (no fit yet)"
                if ctx.get("novel_in") == "case" else "it names a binary no baseline host ran")
        parts.append((weight, f"{what}: {', '.join(novel)} (+{weight:.2f})"))
    lineage_term = float(ctx.get("lineage_context") or 0.0) * float(ctx.get("lineage_weight", 0.5))
    if lineage_term > 0:
        parts.append((lineage_term, "its process tree is already suspicious: an ancestor's "
                      f"creation scored high (+{lineage_term:.2f})"))
    out = [text for _, text in sorted(parts, key=lambda p: -p[0])]
    spans = explanation.get("surprising_spans") or []
    if spans:
        out.append("most surprising: " + "; ".join(
            f"\"{s['text']}\" ({s['bits_per_byte']} bits/byte)" for s in spans[:3]))
    near = [t for t in explanation.get("nearest_baseline") or [] if t]
    if near:
        out.append(f"nearest baseline text: {near[0]}")
    elif explanation.get("medoid"):
        out.append(f"typical text of its cluster: {explanation['medoid']}")
    chain = explanation.get("process_lineage") or []
    if chain:
        out.append("lineage: " + " <- ".join(
            (p.get("image") or f"{p.get('process_guid')} (not stored)") for p in chain))
    return out
