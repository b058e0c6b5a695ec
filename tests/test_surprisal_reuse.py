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
