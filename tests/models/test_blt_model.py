"""BLT and entropy model: shapes, norms, determinism, per-event entropies, padded == packed."""

import pytest
import torch

from plugin.models.blt.byteseq import BOS, make_batch, to_bytes
from plugin.models.blt.model import PRESETS, BLTConfig
from tests.models.blt_helpers import make_texts
from tests.models.blt_helpers import micro_model as build_micro_model


@pytest.fixture(name="micro_model")
def _micro_model():
    return build_micro_model()


@pytest.fixture(name="texts")
def _texts():
    return make_texts(24)


def _blobs(texts):
    return [to_bytes(t) for t in texts]


def test_make_batch_layout():
    ids, layout = make_batch([b"ab", b"", b"xyz"])
    assert ids.shape == (3, 4)
    assert ids[:, 0].tolist() == [BOS] * 3
    assert layout.lengths.tolist() == [3, 1, 4]
    assert ids[2].tolist() == [BOS, ord("x"), ord("y"), ord("z")]


def test_truncation_is_deterministic_prefix():
    long = "x" * 5000
    assert to_bytes(long, 1024) == b"x" * 1024
    assert to_bytes("é" * 3, 3) == "é".encode() + b"\xc3"


def test_forward_shapes_and_unit_norm(micro_model, texts):
    ids, layout = make_batch(_blobs(texts + [""]))
    with torch.inference_mode():
        v = micro_model(ids, layout)
    assert v.shape == (len(texts) + 1, micro_model.dim)
    assert torch.isfinite(v).all()
    torch.testing.assert_close(v.norm(dim=1), torch.ones(len(texts) + 1))


def test_presets_build_and_differ():
    dims = {name: BLTConfig.preset(name).dim for name in PRESETS}
    assert dims["tiny"] < dims["small"] < dims["base"]
    cfg = BLTConfig.preset("tiny")
    assert BLTConfig.from_dict(cfg.to_dict()) == cfg


def test_deterministic(micro_model, texts):
    ids, layout = make_batch(_blobs(texts))
    with torch.inference_mode():
        a, b = micro_model(ids, layout), micro_model(ids, layout)
    assert torch.equal(a, b)


def test_vectors_differ_across_texts(micro_model, texts):
    ids, layout = make_batch(_blobs(texts))
    with torch.inference_mode():
        v = micro_model(ids, layout)
    sims = v @ v.T
    assert (sims[~torch.eye(len(texts), dtype=torch.bool)] < 0.9999).all()


def test_entropy_is_per_event_no_leakage(micro_model):
    a = b"event=1 Image=C:\\Windows\\System32\\cmd.exe CommandLine=cmd /c whoami"
    others = [b"event=3 DestinationIp=10.0.0.1 DestinationPort=445", b"x" * 90, b""]
    ent = micro_model.entropy

    def ents(blobs, packed):
        ids, layout = make_batch(blobs, packed=packed)
        with torch.inference_mode():
            e = ent.entropies(ids, layout)
        start = int(layout.lengths[: blobs.index(a)].sum())
        return e[start : start + len(a) + 1]

    alone = ents([a], False)
    for packed in (False, True):
        # batched with others, and preceded by other events in the same (packed) stream
        torch.testing.assert_close(ents(others + [a], packed), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ents([a] + others, packed), alone, atol=1e-5, rtol=1e-5)
    # a flattened stream without per-event masking (what the reference does) would differ:
    joined = make_batch([others[0] + a])
    with torch.inference_mode():
        leaky = ent.entropies(*joined)[-len(a) - 1 :]
    assert not torch.allclose(leaky[1:], alone[1:], atol=1e-3)


def test_surprisal_one_value_per_byte(micro_model):
    ids, layout = make_batch([b"abc", b"", b"hello"])
    with torch.inference_mode():
        s = micro_model.entropy.surprisal(ids, layout)
    assert s.shape == (8,)
    assert (s >= 0).all()


def test_padded_equals_packed_model_output(micro_model, texts):
    blobs = _blobs(texts[:6] + [""])
    with torch.inference_mode():
        padded = micro_model(*make_batch(blobs, packed=False))
        packed = micro_model(*make_batch(blobs, packed=True))
    torch.testing.assert_close(padded, packed, atol=1e-5, rtol=1e-4)


def test_embedding_independent_of_batch_mates(micro_model, texts):
    blobs = _blobs(texts)
    with torch.inference_mode():
        together = micro_model(*make_batch(blobs))
        alone = micro_model(*make_batch(blobs[3:4]))
    torch.testing.assert_close(together[3:4], alone, atol=1e-5, rtol=1e-4)


def test_training_loss_backward(micro_model, texts):
    micro_model.train()
    ids, layout = make_batch(_blobs(texts[:8]))
    g = torch.Generator().manual_seed(0)
    for objective in ("mpr", "contrastive", "mpr+contrastive"):
        loss, parts = micro_model.training_loss(ids, layout, objective, g)
        loss.backward()
        assert torch.isfinite(loss) and parts["loss"] > 0
    assert micro_model.encoder.byte_emb.weight.grad is not None
