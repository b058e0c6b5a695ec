"""The entropy model: a tiny causal byte LM that decides where patches start.

Context never crosses an event boundary: every event is its own sequence (``[BOS, bytes...]``,
positions from 0, attention masked per event, padded or packed alike). Meta's reference flattens
a batch into one long stream and lets the LM see the previous event's bytes, so an event's patches
depend on its batch neighbours; ours are a function of the event alone (tested).

Output position ``j`` (input token ``j``) predicts byte ``b_j``:
``entropy[j] = H(p(. | BOS, b_0..b_{j-1}))`` and ``surprisal[j] = -log2 p(b_j | ...)``, in bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugin.models.attention import Layout
from plugin.models.blt.byteseq import DEFAULT_MAX_BYTES, VOCAB
from plugin.models.blt.layers import Stack, StackConfig, init_weights

LOG2E = 1.0 / math.log(2.0)


@dataclass
class EntropyConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.0
    window: int | None = 64  # local attention chunk (tokens); None = the whole event
    max_positions: int = DEFAULT_MAX_BYTES + 1  # BOS + bytes

    def stack(self) -> StackConfig:
        return StackConfig(self.d_model, self.n_layers, self.n_heads, 4, self.dropout, True, self.window)


class EntropyModel(nn.Module):
    def __init__(self, cfg: EntropyConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(VOCAB, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.stack = Stack(cfg.stack())
        self.head = nn.Linear(cfg.d_model, 256)
        init_weights(self)

    def forward(self, ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Next-byte logits ``(B, T, 256)`` in layout shape."""
        pos = layout.unflat(layout.pos)
        x = self.tok_emb(ids) + self.pos_emb(pos)
        return self.head(self.stack(x, layout))

    @staticmethod
    def targets(ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Flat next-byte targets ``(N,)``; -100 where the next token is another event's BOS."""
        flat = layout.flat(ids)
        tgt = torch.full_like(flat, -100)
        tgt[:-1] = flat[1:]
        tgt[:-1][layout.pos[1:] == 0] = -100  # last token of each event predicts nothing
        return tgt

    def loss(self, ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) over all real bytes in the batch."""
        logits = layout.flat(self(ids, layout)).float()
        return F.cross_entropy(logits, self.targets(ids, layout), ignore_index=-100)

    def entropies(self, ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Flat ``(N,)`` entropy in bits of the next-byte distribution at every token."""
        logp = F.log_softmax(layout.flat(self(ids, layout)).float(), dim=-1)
        return -(logp.exp() * logp).sum(-1) * LOG2E

    def entropies_and_surprisal(self, ids: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        """Both readings of one forward pass: `entropies` (where patches start) and `surprisal`
        (how unexpected each byte is, for scoring), so inference runs the entropy model once."""
        logp = F.log_softmax(layout.flat(self(ids, layout)).float(), dim=-1)
        ent = -(logp.exp() * logp).sum(-1) * LOG2E
        tgt = self.targets(ids, layout)
        keep = tgt >= 0
        return ent, -logp[keep].gather(1, tgt[keep, None]).squeeze(1) * LOG2E

    def surprisal(self, ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Flat per-byte surprisal in bits, ``(N - n_seq,)``: one value per real byte, in order."""
        logp = F.log_softmax(layout.flat(self(ids, layout)).float(), dim=-1)
        tgt = self.targets(ids, layout)
        keep = tgt >= 0
        return -logp[keep].gather(1, tgt[keep, None]).squeeze(1) * LOG2E
