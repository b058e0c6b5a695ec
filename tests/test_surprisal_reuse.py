"""Surprisal scoring reuses the entropy pass of embedding: same numbers, no second pass."""

from __future__ import annotations

import numpy as np

from plugin.detect.surprisal import window_surprisal
from plugin.models.embedder import BLTEmbedder


def test_window_surprisal_from_the_embed_pass_equals_a_fresh_pass(micro_model_dir):
    emb = BLTEmbedder.from_dir(micro_model_dir)
    texts = [f"eid=1 image=c:\\tools\\t{i}.exe commandline=t{i} /x {'a' * (i % 50)}" for i in range(40)]
    texts += ["", "é" * 3000]  # empty, and longer than max_bytes (truncated alike)
    emb.embed(texts)
    assert set(emb.last_surprisal) == set(texts)
    reused = window_surprisal(emb, texts)
    emb.last_surprisal = {}
    fresh = window_surprisal(emb, texts)
    np.testing.assert_allclose(reused, fresh, rtol=1e-5, atol=1e-5)
    for t in texts[:3]:  # and equal to the per-text surprisal explanations use
        emb.embed([t])
        np.testing.assert_allclose(emb.last_surprisal[t], emb.surprisal(t), rtol=1e-5, atol=1e-5)


def test_window_means_is_the_one_window_scorer_and_explanations_share():
    from plugin.detect.explain import surprising_spans
    from plugin.models.blt.surprisal import WINDOW, window_means
    from plugin.models.blt.surprisal import window_max as _window_max

    rng = np.random.default_rng(0)
    for n in (0, 1, 5, WINDOW - 1, WINDOW, WINDOW + 1, 200):
        v = rng.random(n).astype(np.float32) * 8
        means = window_means(v, WINDOW)
        w = min(WINDOW, n)
        naive = np.array([v[s:s + w].astype(np.float64).mean() for s in range(n - w + 1)]) if n else np.zeros(0)
        assert means.shape == naive.shape
        np.testing.assert_allclose(means, naive, rtol=1e-12, atol=1e-12)
        # the scorer's value is exactly the maximum window mean
        assert _window_max(v, WINDOW) == (float(means.max()) if n else 0.0)
        # and explanations rank the very same windows: the top span carries that maximum
        text = "".join("abcdefgh "[i % 9] for i in range(n))
        spans = surprising_spans(text, v, top=1)
        if n:
            assert spans[0]["bits_per_byte"] == round(float(means.max()), 2)
            best = int(np.argmax(means))
            assert spans[0]["start"] <= best and best + w <= spans[0]["end"]
        else:
            assert spans == []


def test_explanations_reuse_the_embed_pass(micro_model_dir):
    """An outlier's surprising spans come from the pass that embedded it (a streaming consumer
    spent a quarter of its time recomputing them), and equal a fresh pass's."""
    from plugin.detect.explain import _surprisal, surprising_spans

    emb = BLTEmbedder.from_dir(micro_model_dir)
    text = "eid=1 image=c:\\users\\<user>\\appdata\\local\\temp\\qzxv.exe commandline=qzxv -enc aGVsbG8="
    emb.embed([text])
    calls = []
    fresh = emb.surprisal
    emb.surprisal = lambda t: calls.append(t) or fresh(t)
    reused = _surprisal(emb, text)
    assert calls == []
    assert surprising_spans(text, reused) == surprising_spans(text, fresh(text))
    assert _surprisal(emb, "a text it never embedded").shape[0] > 0 and calls


def test_sub_batches_bound_padding_and_give_the_vectors_of_one_text_at_a_time(micro_model_dir):
    """A micro-batch's few new texts differ widely in length: one padded pass over them all
    computed up to 4x the real tokens. Sub-batches keep padding within PAD_RATIO (+ slack), cover
    every text once, and change no vector beyond float noise."""
    from plugin.models.embedder_base import PAD_RATIO, PAD_SLACK

    emb = BLTEmbedder.from_dir(micro_model_dir)
    texts = [f"eid=1 image=c:\\x\\t{i}.exe commandline={'a' * (7 * i * i % 900)}" for i in range(30)]
    sizes = [len(to) + 1 for to in (t.encode() for t in texts)]
    parts = list(emb._batches(sizes))
    assert sorted(i for p in parts for i in p) == list(range(len(texts)))
    assert len(parts) > 1  # the lengths are spread: one pass would pad most texts
    for p in parts:
        real = sum(sizes[i] for i in p)
        assert len(p) == 1 or len(p) * max(sizes[i] for i in p) <= PAD_RATIO * real + PAD_SLACK
    together = emb.embed(texts)
    alone = np.stack([emb.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-2)
