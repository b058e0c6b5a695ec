"""`Embedder`: what the BLT and the Linformer embedders share, so both batch texts the same way.

Decided once in ``__init__``: the device and precision (`plugin.models.device.inference_setup`),
the bf16 copy of the weights on a CPU with native bf16, and the version over the sub-models'
versions. Then `Embedder.embed` turns texts into model inputs, sorts them by token count, cuts
them into batches of at most ``max_batch_tokens`` tokens (padded cost: rows x longest; packed
cost: the tokens themselves) so padding stays small, hands each batch to the subclass's
`Embedder._embed_batch`, L2-normalizes, and writes the rows back in input order.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plugin.memory import release_freed_heap
from plugin.models.attention import prefer_packed
from plugin.models.checkpoint import combined_version
from plugin.models.device import inference_setup

# one text as the model takes it: bytes for the BLT, token ids for the Linformer
Item = TypeVar("Item")

#: a padded batch computes at most this many times its real tokens (plus `PAD_SLACK`)
PAD_RATIO = 1.25
PAD_SLACK = 256


class Embedder(ABC, Generic[Item]):
    """Batching, input order, device and precision for an embedding model with a ``dim``."""

    name: ClassVar[str]
    # whether the model can run packed batches (no padding); used where `prefer_packed` says so
    can_pack: ClassVar[bool] = False
    # return the freed heap to the OS after every batch on CPU (each batch has new tensor
    # sizes, see plugin.memory): worth it for the BLT's large batches
    release_heap_per_batch: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        versions: dict[str, str],
        device: str | None,
        threads: int | None,
        cpu_bf16: bool | str,
        max_batch_tokens: int,
    ):
        self.device, self.autocast_dtype, bf16_copy = inference_setup(device, threads, cpu_bf16)
        self.model = model.to(self.device).eval()
        self.versions = dict(versions)
        self.version = combined_version(self.versions)
        self.dim: int = model.dim
        self.packed = self.can_pack and prefer_packed(self.device)
        self.max_batch_tokens = max_batch_tokens
        self.run_model = self._bf16_copy() if bf16_copy else self.model  # what computes vectors
        bf16 = self.run_model is not self.model or self.autocast_dtype is not None
        self.precision = "bf16" if bf16 else "fp32"

    def _bf16_copy(self) -> nn.Module:
        """A bf16 copy of the model for CPU inference (subclasses drop the parts that must stay
        fp32)."""
        return copy.deepcopy(self.model).to(torch.bfloat16)

    @abstractmethod
    def _inputs(self, texts: Sequence[str]) -> list[Item]:
        """Every text as the model takes it (truncated), in input order."""

    @abstractmethod
    def _n_tokens(self, item: Item) -> int:
        """How many positions ``item`` occupies in a batch."""

    @abstractmethod
    def _embed_batch(
        self, texts: Sequence[str], items: list[Item], idx: list[int]
    ) -> torch.Tensor:
        """Unnormalized vectors ``(len(idx), dim)`` of ``items[i] for i in idx`` (on any device)."""

    def _batches(self, sizes: list[int]) -> Iterator[list[int]]:
        """Indices sorted by size, cut into batches of at most ``max_batch_tokens`` tokens; a
        padded batch is also cut where padding would exceed `PAD_RATIO` of its real tokens (plus
        `PAD_SLACK`, so a few short texts still share one pass).

        Why the padding bound: a consumer embeds a handful of new texts per micro-batch, 80 to
        1,000 bytes long; padded to the longest, one pass computed up to 4x the real tokens.
        Measured on 2 cores (1,178 new texts of a simulated stream, in its 80 micro-batches, BLT,
        one thread): 7.60 ms a text before, 6.14 with the bound; vectors within bf16 noise."""
        order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
        batch: list[int] = []
        real = 0
        for i in order:
            n = sizes[i]
            # padded cost = rows * longest (sorted ascending: the newest is the longest);
            # packed cost = the tokens themselves
            cost = real + n if self.packed else (len(batch) + 1) * n
            over = cost > self.max_batch_tokens or (
                not self.packed and cost > PAD_RATIO * (real + n) + PAD_SLACK)
            if batch and over:
                yield batch
                batch, real = [], 0
            batch.append(i)
            real += n
        if batch:
            yield batch

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 L2-normalized vectors, in input order."""
        items = self._inputs(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for idx in self._batches([self._n_tokens(x) for x in items]):
            vec = self._embed_batch(texts, items, idx)
            out[np.asarray(idx)] = F.normalize(vec.float(), dim=-1).cpu().numpy()
            if self.release_heap_per_batch and self.device.type == "cpu":
                release_freed_heap()
        return out
