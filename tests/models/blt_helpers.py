"""Helpers for the model tests: a micro BLT config and canonical-like texts."""

from __future__ import annotations

import random

from plugin.models.blt.model import BLTConfig


def micro_config() -> BLTConfig:
    """A very small BLT so that training tests run in seconds on CPU."""
    return BLTConfig.from_dict(
        dict(
            size="micro",
            entropy=dict(d_model=32, n_layers=2, n_heads=2, window=16),
            encoder=dict(d_model=32, n_layers=1, n_heads=2, window=16,
                         hashing=dict(ngram_sizes=(3, 4), n_hashes=2, buckets=64)),
            latent=dict(d_model=32, n_layers=1, n_heads=2),
            patch=dict(threshold=3.0, max_patch_len=8),
            max_bytes=256,
        )
    )


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    images = ["cmd.exe", "powershell.exe", "svchost.exe", "chrome.exe", "rundll32.exe"]
    out = []
    for i in range(n):
        out.append(
            f"event={rng.choice([1, 3, 11])} Image=C:\\Windows\\System32\\{rng.choice(images)} "
            f"CommandLine={rng.choice(['whoami', 'net user', 'ipconfig /all'])} {i} "
            f"User=<USER> Port={rng.randrange(65536)}"
        )
    return out


def micro_model():
    """A seeded, untrained micro BLT in eval mode."""
    import torch

    from plugin.models.blt.model import BLT

    torch.manual_seed(0)
    return BLT(micro_config()).eval()
