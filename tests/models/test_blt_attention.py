"""The one attention dispatch: packed (block-diagonal) == padded, on CPU."""

import pytest
import torch

from plugin.models.attention import Layout, attend, pack, unpack


def _qkv(lengths, H=2, Dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    return [torch.randn(len(lengths), T, H, Dh, generator=g) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,shift", [(None, 0), (4, 0), (4, 2), (16, 8)])
def test_packed_block_diagonal_equals_padded(causal, window, shift):
    lengths = [7, 1, 13, 4, 9]
    q, k, v = _qkv(lengths)
    lens = torch.tensor(lengths)
    padded = attend(q, k, v, Layout.build(lens, packed=False), causal, window, shift)
    packed_layout = Layout.build(lens, packed=True)
    out = attend(pack(q, lens), pack(k, lens), pack(v, lens), packed_layout, causal, window, shift)
    assert out.shape == (1, sum(lengths), 2, 8)
    torch.testing.assert_close(unpack(out, lens, max(lengths)) * _valid(lens)[..., None, None],
                               padded * _valid(lens)[..., None, None], atol=1e-5, rtol=1e-5)


def _valid(lens):
    return (torch.arange(int(lens.max()))[None] < lens[:, None]).float()


def test_padded_result_ignores_padding_content():
    lengths = [3, 6]
    q, k, v = _qkv(lengths)
    layout = Layout.build(torch.tensor(lengths), packed=False)
    a = attend(q, k, v, layout)
    k2, v2 = k.clone(), v.clone()
    k2[0, 3:] = 100.0
    v2[0, 3:] = -100.0
    b = attend(q, k2, v2, layout)
    torch.testing.assert_close(a[0, :3], b[0, :3])
    assert torch.isfinite(b).all()


def test_pack_unpack_round_trip():
    lens = torch.tensor([2, 5, 1])
    x = torch.randn(3, 5, 4) * _valid(lens)[..., None]
    assert torch.equal(unpack(pack(x, lens), lens, 5), x)


def test_layout_flat_unflat_and_positions():
    lens = torch.tensor([2, 3])
    for packed in (False, True):
        layout = Layout.build(lens, packed=packed)
        flat = torch.arange(5.0)
        assert torch.equal(layout.flat(layout.unflat(flat)), flat)
        assert layout.pos.tolist() == [0, 1, 0, 1, 2]
        assert layout.seq_id.tolist() == [0, 0, 1, 1, 1]
