"""Transformer building blocks shared by the entropy model, local encoder and latent transformer.

Pre-LayerNorm blocks, nanoGPT style, in data-flow order: attention, MLP, block, stack.
Attention itself goes through `plugin.models.attention.attend` (the one dispatch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugin.models.attention import Layout, attend


@dataclass
class StackConfig:
    """A stack of transformer blocks."""

    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.0
    causal: bool = False
    window: int | None = None  # attention inside chunks of this many tokens (None: whole event)


class SelfAttention(nn.Module):
    def __init__(self, cfg: StackConfig, shift: int = 0):
        super().__init__()
        self.window, self.shift = cfg.window, shift
        assert cfg.d_model % cfg.n_heads == 0
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        y = attend(q, k, v, layout, self.causal, self.window, self.shift).reshape(B, T, D)
        return self.drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: StackConfig, shift: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg, shift)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), layout)
        return x + self.mlp(self.ln2(x))


class Stack(nn.Module):
    """``n_layers`` blocks and a final LayerNorm.

    With a window, odd layers shift their chunks by half a window so context crosses borders.
    """

    def __init__(self, cfg: StackConfig):
        super().__init__()
        half = (cfg.window or 0) // 2
        self.blocks = nn.ModuleList(Block(cfg, (i % 2) * half) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, layout)
        return self.ln_f(x)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style init: normal(0, 0.02) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear,)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(m.weight, std=std)
