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

from plugin.detect.surprisal import WINDOW, window_means


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


def make_explainer(loaded, embedder, baseline_text: Callable[[list[str]], dict[str, str]]):
    """An explain(text, TextScore) -> dict closure for the score stage."""

    def explain(text: str, ts) -> dict:
        d = ts.detail or {}
        out: dict = {
            "score": round(ts.score, 4), "threshold": 1.0, "is_outlier": ts.is_outlier,
            "fit_version": loaded.version, "fit_origin": loaded.origin,
            "nearest_cluster": ts.cluster,
            "medoid": loaded.medoids[ts.cluster] if 0 <= ts.cluster < len(loaded.medoids) else "",
            "measures": d,
        }
        idx = d.get("nearest_index")
        if idx is not None and loaded.baseline_hashes:
            ids = [idx] if isinstance(idx, int) else list(idx)
            hashes = [loaded.baseline_hashes[i] for i in ids if 0 <= i < len(loaded.baseline_hashes)]
            texts = baseline_text(hashes)
            out["nearest_baseline"] = [texts.get(h, "") for h in hashes]
        try:
            out["surprising_spans"] = surprising_spans(text, embedder.surprisal(text))
        except Exception as exc:  # an explanation must never cost the event
            out["surprising_spans_error"] = str(exc)
        return out

    return explain
