"""Texts -> byte-id batches.

Every event becomes ``[BOS, b0, b1, ..., b_{L-1}]``: the BOS id (256) gives the empty text one
token and gives the entropy model a first position to predict ``b0`` from. ``MASK`` (257) is only
used by the masked-patch training objective. Texts longer than ``max_bytes`` UTF-8 bytes are
truncated to their first ``max_bytes`` bytes (deterministic; may cut a multi-byte character,
which is fine for a byte model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from plugin.models.attention import Layout

BOS = 256
MASK = 257
VOCAB = 258  # 256 bytes + BOS + MASK
DEFAULT_MAX_BYTES = 1024


def to_bytes(text: str | bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """UTF-8 bytes of ``text`` (invalid surrogates replaced), truncated to ``max_bytes``."""
    b = text if isinstance(text, bytes) else text.encode("utf-8", errors="replace")
    return b[:max_bytes]


def make_batch(
    texts: Sequence[bytes], packed: bool = False, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, Layout]:
    """Byte strings -> (ids in layout shape, Layout). Ids are int64; padding is 0."""
    lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    is_bos = np.zeros(flat.shape[0], dtype=bool)
    is_bos[starts] = True
    flat[is_bos] = BOS
    flat[~is_bos] = np.frombuffer(b"".join(texts), dtype=np.uint8)
    layout = Layout.build(torch.from_numpy(lengths), packed=packed, device=device)
    ids = layout.unflat(torch.from_numpy(flat).to(device), fill=0)
    return ids, layout
