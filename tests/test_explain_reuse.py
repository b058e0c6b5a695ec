"""The settle pass explains an outlier text again under its new calibration, taking the text-only
parts of the first walk's explanation (surprising spans cost an entropy-model pass)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from plugin.detect.explain import make_explainer
from plugin.detect.scoring import EventScore, TextScore, explanation


class CountingEmbedder:
    def __init__(self) -> None:
        self.passes = 0

    def surprisal(self, text: str) -> np.ndarray:
        self.passes += 1
        return np.linspace(0.5, 6.0, len(text.encode()), dtype=np.float32)


def _loaded():
    return SimpleNamespace(version=0, origin="shipped", medoids=[""], baseline_hashes=[])


def test_a_second_walk_reuses_the_first_walks_spans_and_recomputes_the_scores():
    emb = CountingEmbedder()
    explain = make_explainer(_loaded(), emb, lambda hashes: {})
    text = "process_create image=c:\\temp\\x.exe command_line=x.exe -enc AAAA"
    first_ts = TextScore(0, 0.9, 1.4, True, {"surprisal_threshold": 2.0})
    settled_ts = TextScore(0, 0.9, 1.1, True, {"surprisal_threshold": 2.5})
    ev = EventScore(1.1, True, {}, None)
    first_cache: dict = {}
    first = explanation(explain, text, first_ts, ev, [], first_cache)
    assert emb.passes == 1 and first["surprising_spans"]
    second_cache: dict = {}
    second = explanation(explain, text, settled_ts, ev, [], second_cache, first_cache)
    assert emb.passes == 1  # no entropy pass for a text the first walk explained
    assert second["surprising_spans"] == first["surprising_spans"]
    assert second["score"] == 1.1 and second["measures"] == {"surprisal_threshold": 2.5}
    # a text the first walk did not explain still gets its own pass
    explanation(explain, text + " more", settled_ts, ev, [], second_cache, first_cache)
    assert emb.passes == 2


class BatchingEmbedder(CountingEmbedder):
    """An embedder whose model runs elsewhere (an embedding worker): a request per call."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.requests = 0
        self.fail = fail

    def byte_surprisal(self, texts: list[str]) -> list[np.ndarray]:
        self.requests += 1
        if self.fail:
            raise RuntimeError("worker gone")
        return [np.linspace(0.5, 6.0, len(t.encode()), dtype=np.float32) for t in texts]


def test_a_batchs_explanations_share_one_prefetched_pass():
    """The score stage prefetches the surprisal of every text it is about to explain: with the
    model in a worker, one request a batch instead of one a text (each waited behind the next
    batch's embedding). The spans are those a pass of its own gives."""
    texts = [f"process_create image=c:\\temp\\x{i}.exe command_line=x{i}.exe -enc AAAA{i}"
             for i in range(5)]
    ts = TextScore(0, 0.9, 1.4, True, {})
    ev = EventScore(1.4, True, {}, None)
    alone = make_explainer(_loaded(), CountingEmbedder(), lambda hashes: {})
    emb = BatchingEmbedder()
    explain = make_explainer(_loaded(), emb, lambda hashes: {})
    explain.prefetch(texts)
    for t in texts:
        assert explain(t, ts)["surprising_spans"] == alone(t, ts)["surprising_spans"]
    assert emb.requests == 1 and emb.passes == 0
    # a failed prefetch costs nothing but speed: each text then runs its own pass
    broken = BatchingEmbedder(fail=True)
    explain = make_explainer(_loaded(), broken, lambda hashes: {})
    explain.prefetch(texts)
    assert explain(texts[0], ts)["surprising_spans"] and broken.passes == 1
