"""The summary of an entropy-model pass that scoring reads: the highest mean surprisal over a
window of `WINDOW` consecutive bytes.

It lives with the model because it is a pure function of the model's per-byte surprisal, so it
is computed once, where the pass runs (the embedding), and stored beside the text's vector
(`text_vectors.window_bits`): a text embedded by an earlier run, or read back from the store,
is scored without a second pass. The scorer (`plugin.detect.surprisal`) and the explanations
use the same functions.
"""

from __future__ import annotations

import numpy as np

#: bytes per window: one strange stretch (an encoded blob, a random path) stands out even inside
#: a long, ordinary command line, where a whole-text mean would dilute it
WINDOW = 12


def window_means(v: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean of every run of ``min(window, len(v))`` consecutive values of ``v`` (per-byte
    surprisal), float64, one per start position: ``len(v) - w + 1`` of them, none for empty input.
    The scorer takes their maximum; explanations rank them to find the surprising spans."""
    v = np.asarray(v)
    n = len(v)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    w = min(window, n)
    c = np.concatenate([[0.0], np.cumsum(v, dtype=np.float64)])
    return (c[w:] - c[:-w]) / w


def window_max(v: np.ndarray, window: int = WINDOW) -> float:
    """The highest of `window_means` (bits per byte); 0.0 for an empty text."""
    means = window_means(v, window)
    return float(means.max()) if means.size else 0.0
