"""Patch boundary logic on hand-made entropy sequences, and threshold calibration."""

import pytest
import torch

from plugin.models.blt.patching import (
    PatchConfig,
    boundary_entropy,
    calibrate_threshold,
    mean_patch_len,
    patch_index,
    patch_starts,
)


def _starts(ent, threshold, mode="global", max_len=100, pos=None):
    ent = torch.tensor(ent, dtype=torch.float32)
    pos = torch.arange(len(ent)) if pos is None else torch.tensor(pos)
    return patch_starts(ent, pos, threshold, mode, max_len).tolist()


def test_global_threshold():
    ent = [9.0, 0.5, 3.0, 0.1, 0.2, 2.5, 2.6, 0.0]
    assert _starts(ent, 2.0) == [1, 0, 1, 0, 0, 1, 1, 0]


def test_first_token_always_starts_even_with_low_entropy():
    assert _starts([0.0, 0.0, 0.0], 1.0) == [1, 0, 0]


def test_monotonic_uses_increase_over_previous():
    ent = [9.0, 0.5, 3.0, 3.1, 0.2, 2.5, 5.0, 4.0]
    # diffs: -, -8.5, 2.5, 0.1, -2.9, 2.3, 2.5, -1.0
    assert _starts(ent, 2.4, "monotonic") == [1, 0, 1, 0, 0, 0, 1, 0]


def test_max_patch_length_forces_splits():
    ent = [0.0] * 10
    assert _starts(ent, 5.0, max_len=3) == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    # the count restarts after an entropy boundary
    ent = [0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0]
    assert _starts(ent, 5.0, max_len=3) == [1, 0, 1, 0, 0, 1, 0]


def test_boundaries_never_cross_events():
    # two events back to back: [0,1,2] and [0,1,2,3]; the second's first token always starts,
    # monotonic differences do not compare across events' borders, max length restarts.
    ent = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    pos = [0, 1, 2, 0, 1, 2, 3]
    assert _starts(ent, 1.0, "global", 3, pos) == [1, 0, 0, 1, 0, 0, 1]
    ent = [0.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0]
    assert _starts(ent, 1.0, "monotonic", 100, pos) == [1, 0, 0, 1, 0, 0, 0]


def test_boundary_entropy_alignment():
    nxt = torch.tensor([5.0, 1.0, 2.0, 7.0, 3.0])  # two events: 3 and 2 tokens
    pos = torch.tensor([0, 1, 2, 0, 1])
    assert boundary_entropy(nxt, pos).tolist() == [5.0, 5.0, 1.0, 7.0, 7.0]


def test_patch_index_and_counts():
    starts = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    seq = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    pid, counts = patch_index(starts, seq, 2)
    assert pid.tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert counts.tolist() == [2, 2]


@pytest.mark.parametrize("mode", ["global", "monotonic"])
def test_calibration_hits_target(mode):
    g = torch.Generator().manual_seed(0)
    lengths = [200] * 20
    ent = torch.rand(sum(lengths), generator=g) * 8
    pos = torch.cat([torch.arange(n) for n in lengths])
    th, achieved = calibrate_threshold(ent, pos, 6.0, mode, 16)
    assert abs(achieved - 6.0) < 0.2
    starts = patch_starts(ent, pos, th, mode, 16)
    assert abs(mean_patch_len(starts, len(lengths)) - achieved) < 1e-9


def test_bad_mode_is_an_error():
    with pytest.raises(ValueError):
        PatchConfig(mode="sideways")
    with pytest.raises(ValueError):
        _starts([1.0], 0.0, "sideways")
