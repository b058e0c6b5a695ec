"""Training: loss falls, deterministic, resumable; the written directory feeds BLTEmbedder."""

import numpy as np
import pytest

from plugin.models import training
from plugin.models.checkpoint import read_config
from plugin.models.embedder import BLTEmbedder
from plugin.models.train import train_model_dir
from plugin.models.training import distinct_texts
from tests.models.blt_helpers import make_texts, micro_config

FAST = dict(batch_size=8, calibration_texts=32, checkpoint_every=3)


def _train(out, steps=6, entropy_steps=6, **kw):
    return train_model_dir(make_texts(40), out, size=micro_config(), steps=steps,
                           entropy_steps=entropy_steps, progress=False,
                           data_description="unit-test texts", **{**FAST, **kw})


def test_distinct_texts_keeps_first_order():
    assert distinct_texts(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained micro model directory shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("trained") / "m"
    stats = _train(out, steps=25, entropy_steps=25, lr=3e-3, entropy_lr=1e-2)
    return out, stats


def test_loss_falls(trained):
    out, stats = trained
    assert stats["entropy"]["final_loss_nats"] < stats["entropy"]["first_loss_nats"] - 0.5
    assert stats["blt"]["final_loss"] < stats["blt"]["first_loss"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "unit-test texts" in card and "bytes per patch" in card
    cfg = read_config(out)
    assert cfg["models"]["blt"]["config"]["patch"]["calibrated"] is True
    assert cfg["training"]["threshold"] == cfg["models"]["blt"]["config"]["patch"]["threshold"]
    assert not (out / ".train_state").exists()


def test_two_runs_give_identical_weights(tmp_path):
    _train(tmp_path / "a")
    _train(tmp_path / "b")
    for name in ("entropy.safetensors", "blt.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_resume_continues_exactly(tmp_path, monkeypatch):
    _train(tmp_path / "full")

    calls = {"n": 0}
    real_update = training.Progress.update

    def crash_on_tenth(self, loss):
        calls["n"] += 1
        if calls["n"] == 10:  # entropy 6 steps (+ calibrate), then BLT step 4: state at BLT step 3
            raise KeyboardInterrupt
        real_update(self, loss)

    monkeypatch.setattr(training.Progress, "update", crash_on_tenth)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed")
    assert (tmp_path / "resumed" / ".train_state" / "state.json").exists()
    monkeypatch.setattr(training.Progress, "update", real_update)
    _train(tmp_path / "resumed")
    for name in ("entropy.safetensors", "blt.safetensors"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()


def test_embedder_from_trained_dir(trained):
    emb = BLTEmbedder.from_dir(trained[0], device="cpu", cpu_bf16=False)
    texts = make_texts(10, seed=5) + ["", "x" * 5000]
    v = emb.embed(texts)
    assert v.shape == (12, emb.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert np.ptp(v, axis=0).max() > 1e-3  # not constant across texts
    # order preserved and deterministic: a reversed request gives the reversed rows
    np.testing.assert_allclose(emb.embed(texts[::-1]), v[::-1], atol=1e-5)
    np.testing.assert_array_equal(emb.embed(texts), v)
    # truncation: a text and its 5000-byte extension share the first max_bytes bytes
    np.testing.assert_allclose(emb.embed(["x" * 256]), v[-1:], atol=1e-5)
    assert emb.embed([]).shape == (0, emb.dim)
    assert emb.surprisal("").shape == (0,) and emb.patches("") == []
    s = emb.surprisal("event=1 Image=cmd.exe")
    assert s.shape == (len("event=1 Image=cmd.exe"),) and (s >= 0).all()
    assert b"".join(emb.patches("event=1 Image=cmd.exe")) == b"event=1 Image=cmd.exe"
    assert len(emb.version) == 16 and emb.name == "blt"


def test_embedder_bf16_close_to_fp32(trained):
    fp32 = BLTEmbedder.from_dir(trained[0], device="cpu", cpu_bf16=False)
    bf16 = BLTEmbedder.from_dir(trained[0], device="cpu", cpu_bf16=True)
    texts = make_texts(16, seed=9)
    cos = (fp32.embed(texts) * bf16.embed(texts)).sum(1)
    assert cos.min() > 0.99


def test_bad_objective_and_empty_corpus(tmp_path):
    with pytest.raises(ValueError):
        train_model_dir(["a"], tmp_path, objective="nope")
    with pytest.raises(ValueError):
        train_model_dir([], tmp_path)
