"""One attention dispatch for every transformer in `plugin/models`.

Variable-length sequences (one Sysmon event each) reach attention in one of two layouts:

* **padded** ``(B, T, ...)``: every sequence right-padded to the longest one in the batch. Torch
  ``scaled_dot_product_attention`` runs it with a boolean key-padding mask (and a causal mask when
  asked). This is the CPU path, and the GPU path when xformers is missing.
* **packed** ``(1, N, ...)``: all sequences concatenated, no padding at all. On CUDA with xformers,
  ``xformers.ops.memory_efficient_attention`` runs it with a ``BlockDiagonalMask`` (causal when
  asked), so a token only sees its own sequence. Off CUDA the same packed tensors go through SDPA
  with an explicit block-diagonal boolean mask: that is the reference the CPU tests check the
  packed path against.

The choice is made once, here (`PACKED_BACKEND`, `prefer_packed`), in the spirit of nanoGPT's
``self.flash = hasattr(F, 'scaled_dot_product_attention')``. Models never branch on the device:
they build a `Layout` for a batch and call `attend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

try:  # the fast-attention choice, made once
    import xformers.ops as xops  # type: ignore[import-not-found]

    HAS_XFORMERS = True
except Exception:  # pragma: no cover - xformers is an optional GPU extra
    xops = None
    HAS_XFORMERS = False


def prefer_packed(device: torch.device | str) -> bool:
    """Packed (no padding) batches only where xformers can run them: CUDA with xformers."""
    return torch.device(device).type == "cuda" and HAS_XFORMERS


@dataclass
class Layout:
    """How a batch of variable-length sequences is laid out in a ``(B, T, D)`` tensor.

    ``lengths`` are the true sequence lengths. Padded: ``B = len(lengths)``, ``T = max length``.
    Packed: ``B = 1``, ``T = sum(lengths)``, sequences back to back in order.
    Helpers `flat` / `unflat` convert between the layout and a ``(N, D)`` stream of the real
    tokens in sequence-major order, which is where pooling and patching happen.
    """

    lengths: torch.Tensor  # (n_seq,) int64, on the compute device
    packed: bool
    T: int
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, lengths: torch.Tensor | list[int], packed: bool, device=None) -> "Layout":
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
        if packed:
            T = int(lengths.sum())
        else:
            T = int(lengths.max()) if lengths.numel() else 0
        return cls(lengths=lengths, packed=packed, T=T)

    @property
    def device(self) -> torch.device:
        return self.lengths.device

    @property
    def n_seq(self) -> int:
        return int(self.lengths.numel())

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    # --- per-token index tensors, in layout shape (B, T) or (1, N) ---------------------------
    def _cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def valid(self) -> torch.Tensor:
        """Bool mask of real tokens in layout shape."""

        def make():
            if self.packed:
                return torch.ones(1, self.T, dtype=torch.bool, device=self.device)
            ar = torch.arange(self.T, device=self.device)
            return ar[None, :] < self.lengths[:, None]

        return self._cached("valid", make)

    @property
    def seq_id(self) -> torch.Tensor:
        """Sequence index of every real token, flat ``(N,)``."""
        return self._cached(
            "seq_id",
            lambda: torch.repeat_interleave(
                torch.arange(self.n_seq, device=self.device), self.lengths
            ),
        )

    @property
    def pos(self) -> torch.Tensor:
        """Position of every real token inside its own sequence, flat ``(N,)``."""

        def make():
            starts = torch.cumsum(self.lengths, 0) - self.lengths
            return torch.arange(self.n_tokens, device=self.device) - starts[self.seq_id]

        return self._cached("pos", make)

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """Layout-shaped ``(B, T, ...)`` -> real tokens ``(N, ...)`` in sequence-major order."""
        return x[0] if self.packed else x[self.valid]

    def unflat(self, x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """Real tokens ``(N, ...)`` -> layout shape, padding filled with ``fill``."""
        if self.packed:
            return x.unsqueeze(0)
        out = x.new_full((self.n_seq, self.T, *x.shape[1:]), fill)
        out[self.valid] = x
        return out

    # --- attention masks, built once per batch and flag ---------------------------------------
    def segment_id(self, window: int | None, shift: int) -> torch.Tensor:
        """Flat ``(N,)`` id of the attention segment of every token.

        Without a window a segment is a whole sequence. With ``window=W`` each sequence is cut into
        chunks ``[kW - shift, (k+1)W - shift)`` of its own positions, and a token attends only
        inside its chunk. Alternating ``shift`` between layers (0, W/2) lets context cross chunk
        borders, like shifted windows.
        """

        def make():
            if window is None:
                return self.seq_id
            chunk = (self.pos + shift) // window
            n_chunks = (self.T + shift) // window + 1
            return self.seq_id * n_chunks + chunk

        return self._cached(("seg", window, shift), make)

    def sdpa_mask(self, causal: bool, window: int | None = None, shift: int = 0) -> torch.Tensor:
        """Boolean mask for SDPA (True = may attend).

        Packed: ``(1, 1, N, N)`` block-diagonal over segments (the CPU reference for xformers).
        Padded without a window: ``(B, 1, 1|T, T)`` key padding (and causal) mask.
        """

        def make():
            if self.packed:
                sid = self.segment_id(window, shift)
                m = sid[:, None] == sid[None, :]  # block diagonal
                if causal:
                    m = m & torch.ones_like(m).tril()
                return m[None, None]
            key_ok = self.valid[:, None, None, :]  # (B, 1, 1, T)
            if causal:
                return key_ok & torch.ones(
                    self.T, self.T, dtype=torch.bool, device=self.device
                ).tril()
            return key_ok

        return self._cached(("sdpa", causal, window, shift), make)

    def xformers_bias(self, causal: bool, window: int | None = None, shift: int = 0):
        def make():  # pragma: no cover - needs CUDA + xformers
            from xformers.ops.fmha.attn_bias import BlockDiagonalMask

            seg = self.segment_id(window, shift)
            seqlens = torch.unique_consecutive(seg, return_counts=True)[1].tolist()
            bias = BlockDiagonalMask.from_seqlens(seqlens)
            return bias.make_causal() if causal else bias

        return self._cached(("xf", causal, window, shift), make)


def _chunked_padded(q, k, v, layout: Layout, causal: bool, window: int, shift: int):
    """Padded-layout windowed attention: reshape into chunks of ``window`` and run SDPA once."""
    B, T, H, Dh = q.shape
    W = window
    left = shift % W
    n_chunks = -(-(T + left) // W)
    right = n_chunks * W - T - left

    def chunk(x):
        return F.pad(x, (0, 0, 0, 0, left, right)).view(B * n_chunks, W, H, Dh).transpose(1, 2)

    def mask():
        valid = F.pad(layout.valid, (left, right)).view(B * n_chunks, 1, 1, W)
        m = valid.expand(-1, 1, W, W)
        eye = torch.eye(W, dtype=torch.bool, device=q.device)
        if causal:
            m = m & torch.ones(W, W, dtype=torch.bool, device=q.device).tril()
        return m | eye  # padding queries see themselves: no empty rows (no NaN)

    m = layout._cached(("chunk", causal, W, shift), mask)
    out = F.scaled_dot_product_attention(chunk(q), chunk(k), chunk(v), attn_mask=m)
    out = out.transpose(1, 2).reshape(B, n_chunks * W, H, Dh)
    return out[:, left : left + T]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    causal: bool = False,
    window: int | None = None,
    shift: int = 0,
) -> torch.Tensor:
    """Attention over ``(B, T, H, Dh)`` queries/keys/values laid out per ``layout``.

    Every model in the package goes through this one function. Returns ``(B, T, H, Dh)``.
    ``window`` restricts attention to chunks of the sequence (see `Layout.segment_id`).
    Padded query rows produce finite garbage; callers drop them.
    """
    if layout.packed and HAS_XFORMERS and q.is_cuda:  # pragma: no cover - GPU path
        bias = layout.xformers_bias(causal, window, shift)
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias)
    if not layout.packed and window is not None and layout.T + shift % window > window:
        return _chunked_padded(q, k, v, layout, causal, window, shift)
    mask = layout.sdpa_mask(causal, window, shift)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def pack(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Padded ``(B, T, ...)`` -> packed ``(1, sum(lengths), ...)``."""
    T = x.shape[1]
    valid = torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    return x[valid].unsqueeze(0)


def unpack(x: torch.Tensor, lengths: torch.Tensor, T: int | None = None, fill=0) -> torch.Tensor:
    """Packed ``(1, N, ...)`` -> padded ``(B, T, ...)`` (``T`` defaults to the longest)."""
    lengths = lengths.to(x.device)
    T = int(lengths.max()) if T is None else T
    valid = torch.arange(T, device=x.device)[None, :] < lengths[:, None]
    out = x.new_full((lengths.numel(), T, *x.shape[2:]), fill)
    out[valid] = x[0]
    return out
