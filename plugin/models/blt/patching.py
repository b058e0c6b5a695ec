"""Entropy patching: where a patch starts.

Works on flat token streams (``(N,)`` tensors in event-major order with ``pos`` = position inside
the event) so that one vectorized pass handles a whole batch without crossing event boundaries.

A token starts a patch when

* it is the first token of its event (``pos == 0``: the BOS, so the first byte is in the first
  patch, which always starts at the beginning of the event), or
* ``mode == "global"``:    ``H[t] > threshold``, or
  ``mode == "monotonic"``: ``H[t] - H[t-1] > threshold`` (within the event), or
* the current patch has reached ``max_patch_len`` tokens (forced split every ``max_patch_len``
  tokens after the last entropy boundary).

``H[t]`` is the entropy (bits) of the entropy model's distribution over token ``t`` given the
tokens before it (`boundary_entropy` aligns the model's outputs to tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("global", "monotonic")


@dataclass
class PatchConfig:
    mode: str = "global"
    threshold: float = 2.0  # bits; replaced by `calibrate_threshold` during training
    max_patch_len: int = 16
    target_mean_len: float = 6.0  # bytes per patch the calibration aims for
    calibrated: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"patch mode must be one of {MODES}, got {self.mode!r}")
        if self.max_patch_len < 1:
            raise ValueError("max_patch_len must be >= 1")


def boundary_entropy(next_entropy: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Entropy model outputs -> per-token boundary entropy.

    ``next_entropy[j]`` is the entropy at output ``j``, i.e. about token ``j + 1``. Shift it right by
    one inside each event; the first token (BOS, always a start) takes the second's value so that
    the monotonic difference at the first byte is zero.
    """
    out = torch.empty_like(next_entropy)
    out[1:] = next_entropy[:-1]
    first = pos == 0
    out[first] = next_entropy[first]
    return out


def patch_starts(
    entropy: torch.Tensor,
    pos: torch.Tensor,
    threshold: float,
    mode: str = "global",
    max_patch_len: int = 16,
) -> torch.Tensor:
    """Bool ``(N,)``: which tokens start a patch. See the module docstring for the rule."""
    first = pos == 0
    if mode == "global":
        starts = entropy > threshold
    elif mode == "monotonic":
        diff = torch.zeros_like(entropy)
        diff[1:] = entropy[1:] - entropy[:-1]
        starts = diff > threshold
    else:
        raise ValueError(f"patch mode must be one of {MODES}, got {mode!r}")
    starts = starts | first
    # Forced splits: offset from the last entropy start, cut every max_patch_len tokens.
    idx = torch.arange(entropy.numel(), device=entropy.device)
    last_start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), 0).values
    offset = idx - last_start
    return starts | (offset % max_patch_len == 0)


def patch_index(starts: torch.Tensor, seq_id: torch.Tensor, n_seq: int):
    """Patch id of every token (global, event-major) and the number of patches per event."""
    patch_id = torch.cumsum(starts.long(), 0) - 1
    counts = torch.zeros(n_seq, dtype=torch.long, device=starts.device)
    counts.index_add_(0, seq_id, starts.long())
    return patch_id, counts


def mean_patch_len(starts: torch.Tensor, n_seq: int) -> float:
    """Mean real bytes per patch (the BOS of each event is not counted as a byte)."""
    n_patches = int(starts.sum())
    return (starts.numel() - n_seq) / max(n_patches, 1)


def calibrate_threshold(
    entropy: torch.Tensor,
    pos: torch.Tensor,
    target_mean_len: float,
    mode: str = "global",
    max_patch_len: int = 16,
    iters: int = 50,
) -> tuple[float, float]:
    """Bisection on the threshold to hit ``target_mean_len`` bytes per patch on a corpus.

    Mean patch length grows with the threshold (fewer entropy boundaries), so bisection works.
    Returns ``(threshold, achieved mean bytes per patch)``. If the target is out of reach (e.g.
    above ``max_patch_len``) the closest end of the range is returned.
    """
    n_seq = int((pos == 0).sum())

    def mean_len(th: float) -> float:
        return mean_patch_len(patch_starts(entropy, pos, th, mode, max_patch_len), n_seq)

    if mode == "global":
        lo, hi = float(entropy.min()) - 1.0, float(entropy.max()) + 1.0
    else:
        d = entropy[1:] - entropy[:-1]
        lo, hi = float(d.min()) - 1.0, float(d.max()) + 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if mean_len(mid) < target_mean_len:
            lo = mid
        else:
            hi = mid
    th = hi if abs(mean_len(hi) - target_mean_len) <= abs(mean_len(lo) - target_mean_len) else lo
    return th, mean_len(th)
