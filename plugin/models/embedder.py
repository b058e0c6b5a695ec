"""`BLTEmbedder`: the interface the pipeline uses to turn canonical texts into vectors.

Inference choices, made once in ``__init__`` (device, precision and batching are shared with the
shadow model in `plugin.models.embedder_base.Embedder`; this module runs one batch):

* device: CUDA when available, else CPU (or what the caller names);
* layout: packed batches (no padding) on CUDA with xformers, padded batches elsewhere; texts are
  sorted by length and cut into batches of at most ``max_batch_tokens`` tokens, so padding is
  small; output order is the input order;
* precision: bf16 autocast on CUDA. On CPU, with ``cpu_bf16`` on (``"auto"``: when the CPU has
  native bf16 instructions, e.g. AVX512-BF16 or AMX, where bf16 matmuls run several times
  faster than fp32) the local encoder and latent transformer run from a bf16 copy of their
  weights (pooling sums stay fp32); otherwise fp32. The entropy model, which decides patch
  boundaries, always runs in fp32 so both precisions cut a text into the same patches.
  Cosine to fp32 is checked >= 0.99 by the tests and printed by ``benchmarks/blt_speed.py``;
* texts longer than ``max_bytes`` UTF-8 bytes (config, default 1024) are truncated to their
  first ``max_bytes`` bytes. The empty text embeds like any other (it has a BOS token).

Determinism: the same weights and texts give the same vectors, run after run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plugin.models.blt.byteseq import make_batch, to_bytes
from plugin.models.blt.model import BLT
from plugin.models.blt.surprisal import PerThreadSurprisal
from plugin.models.checkpoint import load_blt
from plugin.models.device import autocast
from plugin.models.embedder_base import Embedder


class BLTEmbedder(Embedder[bytes], PerThreadSurprisal):
    name = "blt"
    can_pack = True
    release_heap_per_batch = True
    model: BLT

    def __init__(
        self,
        model: BLT,
        versions: dict[str, str],
        device: str | None = None,
        threads: int | None = None,
        cpu_bf16: bool | str = "auto",
        max_batch_tokens: int = 16384,
    ):
        super().__init__(model, versions, device, threads, cpu_bf16, max_batch_tokens)
        self.max_bytes = model.cfg.max_bytes
        # per-byte surprisal of the texts of this thread's latest `embed` call, from the same
        # entropy pass that cut them into patches: surprisal scoring right after embedding reads
        # it here instead of running the entropy model a second time (`PerThreadSurprisal`)
        self._init_surprisal_slots()
        self.last_surprisal = {}

    @classmethod
    def from_dir(
        cls, path: str | Path, device: str | None = None, threads: int | None = None, **kw
    ) -> BLTEmbedder:
        model, versions = load_blt(path)
        return cls(model, versions, device=device, threads=threads, **kw)

    def _bf16_copy(self) -> nn.Module:
        bf16 = super()._bf16_copy()
        del bf16.entropy  # patching stays with the fp32 entropy model
        return bf16

    def _inputs(self, texts: Sequence[str]) -> list[bytes]:
        self.last_surprisal = {}  # a new `embed` call: only its texts are kept
        return [to_bytes(t, self.max_bytes) for t in texts]

    def _n_tokens(self, item: bytes) -> int:
        return len(item) + 1  # + BOS

    def _embed_batch(
        self, texts: Sequence[str], items: list[bytes], idx: list[int]
    ) -> torch.Tensor:
        ids, layout = make_batch([items[i] for i in idx], self.packed, self.device)
        # fp32: boundaries do not move
        starts, sur = self.model.patch_starts_and_surprisal(ids, layout)
        sur = sur.cpu().numpy()
        pos = 0
        for i in idx:  # one value per real byte, events in batch order
            n = len(items[i])
            self.last_surprisal[texts[i]] = sur[pos:pos + n]
            pos += n
        with autocast(self.device, self.autocast_dtype):
            return self.run_model.encode(ids, layout, starts).vector

    def surprisal(self, text: str) -> np.ndarray:
        """Per-byte surprisal in bits, ``-log2 p(byte | earlier bytes of this text)``.

        One value per UTF-8 byte of the (truncated) text.
        """
        return self.byte_surprisal([text])[0]

    @torch.inference_mode()
    def byte_surprisal(self, texts: Sequence[str], batch: int = 64) -> list[np.ndarray]:
        """`surprisal` of many texts, in input order, batched shortest first (the entropy model
        alone: scoring a text whose vector came from the cache, not from a pass just now)."""
        blobs = [to_bytes(t, self.max_bytes) for t in texts]
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(blobs)
        order = sorted(range(len(blobs)), key=lambda i: len(blobs[i]))
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            ids, layout = make_batch([blobs[i] for i in idx], False, self.device)
            flat = self.model.entropy.surprisal(ids, layout).float().cpu().numpy()
            pos = 0
            for i in idx:
                n = len(blobs[i])
                out[i] = flat[pos:pos + n]
                pos += n
        return out

    @torch.inference_mode()
    def patches(self, text: str) -> list[bytes]:
        """The text's patches (byte strings), as the model cuts it. Useful for explanations."""
        blob = to_bytes(text, self.max_bytes)
        ids, layout = make_batch([blob], False, self.device)
        starts = self.model.patch_starts(ids, layout).cpu().tolist()
        cuts = [i - 1 for i, s in enumerate(starts) if s and i > 0]  # token i = byte i - 1
        bounds = [0] + [c for c in cuts if c > 0] + [len(blob)]
        return [blob[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
