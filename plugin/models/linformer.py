"""Linformer encoder: the shadow model (written from the Linformer paper, Wang et al. 2020).

Data flow of `Linformer.encode`, top to bottom::

    texts -> [CLS, bpe ids...] (at most max_len)         (plugin.models.bpe, the embedder)
          -> token + learned position embeddings
          -> pre-LN blocks: linear attention, MLP         (LinformerAttention, MLP, Block)
          -> final LayerNorm
          -> mean over the event's real tokens -> linear to out_dim -> event vector

**Linear attention.** Keys and values ``(n, d)`` are projected along the *sequence* axis to
``(k, d)`` by learned ``E, F`` of shape ``(k, max_len)`` (a batch of length ``L <= max_len``
uses their first ``L`` columns), then every query attends over those ``k`` rows with torch SDPA:
cost ``O(n k)`` instead of ``O(n^2)``. No attention mask is needed over the ``k`` projected rows,
and SDPA runs the same on every device, so this model does not go through
`plugin.models.attention.attend` (whose job is the key-padding and packed masks).

**Sharing** (`LinformerConfig.share`, the paper's options): ``"none"``: own ``E`` and ``F`` in
every layer; ``"kv"``: ``E = F`` in every layer (key-value sharing); ``"layerwise"``: one matrix
for keys and values of all layers.

**Padding mask.** Keys and values of padded positions are set to zero *before* the projection,
so ``E K`` sums over the real tokens only, and pooling averages real tokens only: a pad token
reaches nothing a real token sees. An event's vector is therefore the same (to float rounding)
whatever the batch pads it to.

**Training**: masked LM (BERT recipe) with an output layer tied to the token embedding; see
`Linformer.mlm_loss` and `plugin.models.linformer_train`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugin.models.bpe import CLS, MASK, N_SPECIAL, PAD
from plugin.models.checkpoint import (
    CONFIG,
    ModelDirError,
    load_submodel,
    read_config,
    save_submodel,
)

SHARING = ("none", "kv", "layerwise")
ENTRY = "linformer"


@dataclass
class LinformerConfig:
    vocab_size: int = 4096
    dim: int = 128  # model width
    layers: int = 2
    heads: int = 4
    ff_mult: int = 4
    max_len: int = 256  # tokens, [CLS] included; longer texts are truncated
    k: int = 64  # projected sequence length of keys and values
    share: str = "kv"  # "none" | "kv" | "layerwise" (the paper finds them about equal)
    dropout: float = 0.1
    out_dim: int | None = None  # pooled vector size; None: same as dim
    mask_prob: float = 0.15  # MLM: share of real tokens ([CLS] excluded) to predict

    def __post_init__(self):
        if self.share not in SHARING:
            raise ValueError(f"share must be one of {SHARING}, got {self.share!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size must exceed the {N_SPECIAL} special tokens")

    @property
    def pooled_dim(self) -> int:
        return self.out_dim or self.dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinformerConfig:
        return cls(**d)


class LinformerAttention(nn.Module):
    """Multi-head attention over keys and values projected from length ``L`` to ``k``."""

    def __init__(self, cfg: LinformerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.p_drop = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor, e: torch.Tensor, f: torch.Tensor
    ) -> torch.Tensor:
        """``x`` (B, L, D); ``keep`` (B, L, 1): 1 for real tokens, 0 for padding; ``e``, ``f``
        the (k, max_len) sequence projections of this layer."""
        B, L, D = x.shape
        H = self.heads
        q, k, v = self.qkv(x).split(D, dim=-1)
        k = e[:, :L].to(k.dtype) @ (k * keep)  # (B, k_proj, D): padded keys contribute nothing
        v = f[:, :L].to(v.dtype) @ (v * keep)
        q = q.view(B, L, H, D // H).transpose(1, 2)
        k = k.view(B, -1, H, D // H).transpose(1, 2)
        v = v.view(B, -1, H, D // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p_drop if self.training else 0.0)
        return self.drop(self.out(y.transpose(1, 2).reshape(B, L, D)))


class MLP(nn.Module):
    def __init__(self, cfg: LinformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.ff_mult * cfg.dim)
        self.proj = nn.Linear(cfg.ff_mult * cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: LinformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = LinformerAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg)

    def forward(self, x, keep, e, f):
        x = x + self.attn(self.ln1(x), keep, e, f)
        return x + self.mlp(self.ln2(x))


class Linformer(nn.Module):
    def __init__(self, cfg: LinformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        n_proj = {"none": 2 * cfg.layers, "kv": cfg.layers, "layerwise": 1}[cfg.share]
        self.proj = nn.ParameterList(
            nn.Parameter(torch.empty(cfg.k, cfg.max_len)) for _ in range(n_proj)
        )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.pool = nn.Linear(cfg.dim, cfg.pooled_dim)
        # MLM head: transform, then logits against the (tied) token embedding
        self.mlm_fc = nn.Linear(cfg.dim, cfg.dim)
        self.mlm_ln = nn.LayerNorm(cfg.dim)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style normal(0, 0.02) for linear and embedding weights; E, F with std
        1/sqrt(k), which keeps the projected keys near the scale of the keys for sequences of
        about ``k`` tokens (a sum over ``n`` keys with weights of std s has std ``s sqrt(n)``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for p in self.proj:
            nn.init.normal_(p, std=1.0 / math.sqrt(self.cfg.k))
        nn.init.zeros_(self.mlm_bias)

    @property
    def dim(self) -> int:
        return self.cfg.pooled_dim

    def _ef(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's (E, F) per the sharing option."""
        share = self.cfg.share
        if share == "none":
            return self.proj[2 * layer], self.proj[2 * layer + 1]
        e = self.proj[layer if share == "kv" else 0]
        return e, e

    # --- encoder ------------------------------------------------------------------------------
    def hidden(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, L, dim)`` of right-padded ``ids`` ``(B, L)``.

        Rows past a sequence's length are finite garbage that no real token depends on.
        """
        L = ids.shape[1]
        if L > self.cfg.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.cfg.max_len}")
        keep = self.keep(lengths, L).to(self.tok_emb.weight.dtype)
        pos = torch.arange(L, device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, keep, *self._ef(i))
        return self.ln_f(x)

    @staticmethod
    def keep(lengths: torch.Tensor, L: int) -> torch.Tensor:
        """``(B, L, 1)`` bool: True for real tokens."""
        return (torch.arange(L, device=lengths.device)[None, :] < lengths[:, None])[..., None]

    def pool_hidden(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens (summed in fp32), then the linear layer to ``out_dim``."""
        keep = self.keep(lengths, h.shape[1])
        mean = (h.float() * keep).sum(1) / lengths[:, None].clamp(min=1).float()
        return self.pool(mean.to(h.dtype))

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled event vectors ``(B, out_dim)``, not normalized."""
        return self.pool_hidden(self.hidden(ids, lengths), lengths)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Event vectors ``(B, out_dim)``, L2-normalized."""
        return F.normalize(self.encode(ids, lengths).float(), dim=-1)

    # --- masked LM ----------------------------------------------------------------------------
    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states ``(..., dim)`` (output tied to ``tok_emb``)."""
        z = self.mlm_ln(F.gelu(self.mlm_fc(h)))
        return F.linear(z, self.tok_emb.weight.to(z.dtype), self.mlm_bias.to(z.dtype))

    def mlm_loss(
        self, ids: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked-LM cross-entropy on one batch, and its parts (loss, masked-token accuracy)."""
        inputs, where, targets = mask_tokens(
            ids, lengths, self.cfg.mask_prob, self.cfg.vocab_size, generator
        )
        h = self.hidden(inputs, lengths)[where]  # (M, dim): the masked positions only
        logits = self.mlm_logits(h).float()
        loss = F.cross_entropy(logits, targets)
        acc = (logits.argmax(-1) == targets).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc)}


def mask_tokens(
    ids: torch.Tensor, lengths: torch.Tensor, mask_prob: float, vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT masking: ``mask_prob`` of the real tokens after [CLS] are chosen; of those 80% become
    [MASK], 10% a random non-special token, 10% stay. At least one token per batch is chosen.

    Returns (inputs, chosen positions as a bool (B, L) mask, original ids at those positions).
    Random draws come from ``generator`` (on CPU), so a seeded generator gives the same masks.
    """
    B, L = ids.shape
    real = Linformer.keep(lengths, L)[..., 0].cpu()
    real[:, 0] = False  # [CLS] is never a target
    r = torch.rand(B, L, generator=generator)
    chosen = real & (r < mask_prob)
    if not bool(chosen.any()) and bool(real.any()):  # a batch of tiny texts: still one target
        flat = real.flatten().nonzero()[:, 0]
        chosen.view(-1)[flat[torch.randint(len(flat), (1,), generator=generator)]] = True
    how = torch.rand(B, L, generator=generator)
    rand_ids = torch.randint(N_SPECIAL, vocab_size, (B, L), generator=generator)
    chosen, how, rand_ids = chosen.to(ids.device), how.to(ids.device), rand_ids.to(ids.device)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(ids, MASK), ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), rand_ids, inputs)
    return inputs, chosen, ids[chosen]


def batch_ids(seqs: list[list[int]], device: torch.device | str = "cpu"):
    """Token id lists (``[CLS]`` included) -> right-padded ``(B, L)`` int64 ids and lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    L = int(lengths.max()) if len(seqs) else 0
    ids = torch.full((len(seqs), L), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return ids.to(device), lengths.to(device)


def with_cls(ids: list[int], max_len: int) -> list[int]:
    """``[CLS]`` + the first ``max_len - 1`` ids."""
    return [CLS, *ids[: max_len - 1]]


# --- model directory ------------------------------------------------------------------------------
def save_linformer(model_dir: Path | str, model: Linformer) -> dict[str, Any]:
    """Write ``linformer.safetensors`` and its entry (config + pooled dim) into ``config.json``."""
    config = {"model": model.cfg.to_dict(), "dim": model.dim, "tokenizer": "bpe"}
    return save_submodel(model_dir, ENTRY, model.state_dict(), config)


def load_linformer(model_dir: Path | str) -> tuple[Linformer, dict[str, Any]]:
    """`Linformer` (eval mode, CPU) from a model directory, and its ``config.json`` entry."""
    model_dir = Path(model_dir)
    cfg_all = read_config(model_dir)
    entry = cfg_all["models"].get(ENTRY)
    if not isinstance(entry, dict):
        raise ModelDirError(model_dir / CONFIG, f"no sub-model {ENTRY!r} in 'models' (no shadow model trained)")
    try:
        cfg = LinformerConfig.from_dict(entry["config"]["model"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ModelDirError(model_dir / CONFIG, f"bad Linformer config: {e}") from None
    model = Linformer(cfg)  # on the CPU, as `load_blt` (the meta device costs 2 s of imports)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors, entry = load_submodel(model_dir, ENTRY, shapes)
    model.load_state_dict(tensors, strict=True)
    return model.eval(), entry
