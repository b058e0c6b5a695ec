"""Latent transformer: bidirectional attention over an event's patch vectors.

Unlike the paper's causal latent model (built for generation), ours is bidirectional: the
product needs one vector per event, so every patch may see the whole event.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from plugin.models.attention import Layout
from plugin.models.blt.byteseq import DEFAULT_MAX_BYTES
from plugin.models.blt.layers import Stack, StackConfig, init_weights


@dataclass
class LatentConfig:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    max_patches: int = DEFAULT_MAX_BYTES + 1

    def stack(self) -> StackConfig:
        return StackConfig(self.d_model, self.n_layers, self.n_heads, 4, self.dropout, causal=False)


class LatentTransformer(nn.Module):
    def __init__(self, cfg: LatentConfig, d_in: int):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(d_in, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_patches, cfg.d_model)
        self.stack = Stack(cfg.stack())
        init_weights(self)

    def forward(self, patches: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Flat patch vectors ``(P, d_in)`` -> flat patch states ``(P, d_model)``."""
        x = self.in_proj(patches.to(self.in_proj.weight.dtype)) + self.pos_emb(layout.pos)
        return layout.flat(self.stack(layout.unflat(x), layout))
