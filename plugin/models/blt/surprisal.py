"""The summary of an entropy-model pass that scoring reads: the highest mean surprisal over a
window of `WINDOW` consecutive bytes.

It lives with the model because it is a pure function of the model's per-byte surprisal, so it
is computed once, where the pass runs (the embedding), and stored beside the text's vector
(`text_vectors.window_bits`): a text embedded by an earlier run, or read back from the store,
is scored without a second pass. The scorer (`plugin.detect.surprisal`) and the explanations
use the same functions.
"""

from __future__ import annotations

import threading

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


class PerThreadSurprisal:
    """What a BLT pass leaves for scoring, kept per thread: the per-byte surprisal of the
    calling thread's latest `embed` call (`last_surprisal`), and the stored window maxima of its
    batch texts read back instead of embedded (`last_window_bits`). Per thread: the flow embeds
    the next batch on one thread while another scores this one (`plugin.pipeline.flow`), and
    neither may see the other's pass replace its own. Shared by the model loaded in a process
    and the stand-in for one loaded in an embedding worker (`plugin.pipeline.workers`)."""

    _surprisal: threading.local

    def _init_surprisal_slots(self) -> None:
        self._surprisal = threading.local()

    @property
    def last_surprisal(self) -> dict[str, np.ndarray]:
        """{text: per-byte surprisal} of the calling thread's latest `embed` call."""
        return self._thread_slot("surprisal")

    @last_surprisal.setter
    def last_surprisal(self, value: dict[str, np.ndarray]) -> None:
        self._surprisal.surprisal = value

    @property
    def last_window_bits(self) -> dict[str, float]:
        """{text: window maximum of its surprisal} for the calling thread's batch texts whose
        vectors were not embedded now but read back with their stored summary
        (`plugin.pipeline.embed`): scoring reads it instead of running the entropy model."""
        return self._thread_slot("window_bits")

    @last_window_bits.setter
    def last_window_bits(self, value: dict[str, float]) -> None:
        self._surprisal.window_bits = value

    def _thread_slot(self, name: str) -> dict:
        slot = self._surprisal
        if not hasattr(slot, name):
            setattr(slot, name, {})
        return getattr(slot, name)
