"""Local encoder: bytes -> token states -> patch vectors.

Each token's input is its byte embedding plus the sum of its hashed n-gram embeddings (one
``EmbeddingBag`` over all (n, hash) tables) plus a position embedding; one light transformer
layer (full attention inside the event, never across events) mixes them; then every patch is the
**mean** of its token states.

Why mean pooling rather than the paper's cross-attention pooling: events are short (a few hundred
bytes) and the encoder already attends over the whole event, so each token state carries context;
a mean is one ``index_add_`` with no parameters and no extra attention pass, which matters for the
CPU throughput goal, and it is trivially identical in padded and packed layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from plugin.models.attention import Layout
from plugin.models.blt.byteseq import DEFAULT_MAX_BYTES, VOCAB
from plugin.models.blt.hashing import HashConfig, hashed_ngram_ids
from plugin.models.blt.layers import Stack, StackConfig, init_weights


@dataclass
class EncoderConfig:
    d_model: int = 96
    n_layers: int = 1
    n_heads: int = 2
    dropout: float = 0.0
    window: int | None = 64  # local attention chunk (tokens); None = the whole event
    max_positions: int = DEFAULT_MAX_BYTES + 1
    hashing: HashConfig = field(default_factory=HashConfig)

    def __post_init__(self):
        if isinstance(self.hashing, dict):
            self.hashing = HashConfig(**self.hashing)

    def stack(self) -> StackConfig:
        return StackConfig(self.d_model, self.n_layers, self.n_heads, 4, self.dropout, False, self.window)


class LocalEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.byte_emb = nn.Embedding(VOCAB, cfg.d_model)
        self.ngram_emb = nn.EmbeddingBag(
            cfg.hashing.n_tables * cfg.hashing.buckets, cfg.d_model, mode="sum"
        )
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.stack = Stack(cfg.stack())
        init_weights(self)

    def forward(self, ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Token ids in layout shape -> flat token states ``(N, d_model)``."""
        flat_ids, pos = layout.flat(ids), layout.pos
        x = (
            self.byte_emb(flat_ids)
            + self.ngram_emb(hashed_ngram_ids(flat_ids, pos, self.cfg.hashing))
            + self.pos_emb(pos)
        )
        return layout.flat(self.stack(layout.unflat(x), layout))

    @staticmethod
    def pool(h: torch.Tensor, patch_id: torch.Tensor, n_patches: int) -> torch.Tensor:
        """Mean of token states per patch: ``(N, d)`` -> ``(n_patches, d)``, summed in fp32."""
        h = h.float()
        sums = h.new_zeros(n_patches, h.shape[1]).index_add_(0, patch_id, h)
        counts = torch.bincount(patch_id, minlength=n_patches).clamp_min(1)
        return sums / counts[:, None].to(h.dtype)
