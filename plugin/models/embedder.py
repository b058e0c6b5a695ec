"""`BLTEmbedder`: the interface the pipeline uses to turn canonical texts into vectors.

Inference choices, made once in ``__init__``:

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

import copy
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from plugin.memory import release_freed_heap
from plugin.models.attention import prefer_packed
from plugin.models.blt.byteseq import make_batch, to_bytes
from plugin.models.blt.model import BLT
from plugin.models.checkpoint import load_blt

# oneDNN (the CPU bf16 matmuls) caches a compiled primitive, with its buffers, per distinct
# shape, up to 1024 of them. Every batch of texts has a new (rows x length) shape, so the cache
# only grows: embedding 10k real OTRF texts took RSS from 320 MB to 1.5 GB (~70 MB per 1000
# texts, never freed). A cache of 8 keeps the hits inside one batch (the layers of a stack share
# shapes) and held RSS at ~630 MB after 5k texts (vs 1.28 GB), at no measurable speed cost.
# oneDNN reads the variable at its first primitive, so setting it here (before any inference) is
# enough; a value set by the user wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def wants_cpu_bf16(setting: bool | str) -> bool:
    """A bf16 setting (True, False or "auto") resolved: "auto" means where the CPU has native bf16."""
    return setting is True or (setting == "auto" and cpu_has_bf16())


def inference_setup(device: str | None, threads: int | None,
                    cpu_bf16: bool | str) -> tuple[torch.device, torch.dtype | None, bool]:
    """What every embedder decides once: the device (CUDA when available), bf16 autocast on
    CUDA, and whether to run a bf16 copy of the weights on a CPU with native bf16 instructions.
    Returns ``(device, autocast_dtype, cpu_bf16_copy)``."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        return dev, torch.bfloat16, False
    return dev, None, wants_cpu_bf16(cpu_bf16)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context `inference_setup` chose (disabled when it chose none)."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def combined_version(versions: dict[str, str]) -> str:
    """The embedder's version: 16 hex of sha256 over its sub-model versions (entropy + blt)."""
    key = ":".join(f"{k}={versions[k]}" for k in sorted(versions))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class BLTEmbedder:
    name: str = "blt"

    def __init__(
        self,
        model: BLT,
        versions: dict[str, str],
        device: str | None = None,
        threads: int | None = None,
        cpu_bf16: bool | str = "auto",
        max_batch_tokens: int = 16384,
    ):
        self.device, self.autocast_dtype, bf16_copy = inference_setup(device, threads, cpu_bf16)
        self.model = model.to(self.device).eval()
        self.versions = dict(versions)
        self.version = combined_version(self.versions)
        self.dim = model.dim
        self.max_bytes = model.cfg.max_bytes
        self.packed = prefer_packed(self.device)
        self.encode_model = self.model  # what runs encoder + latent
        if bf16_copy:
            self.encode_model = copy.deepcopy(self.model).to(torch.bfloat16)
            del self.encode_model.entropy  # patching stays with the fp32 entropy model
        self.precision = "bf16" if self.encode_model is not self.model or self.autocast_dtype else "fp32"
        self.max_batch_tokens = max_batch_tokens
        # per-byte surprisal of the texts of the latest `embed` call, from the same entropy pass
        # that cut them into patches: surprisal scoring right after embedding reads it here
        # instead of running the entropy model a second time
        self.last_surprisal: dict[str, np.ndarray] = {}

    @classmethod
    def from_dir(
        cls, path: str | Path, device: str | None = None, threads: int | None = None, **kw
    ) -> "BLTEmbedder":
        model, versions = load_blt(path)
        return cls(model, versions, device=device, threads=threads, **kw)

    # --- batching -----------------------------------------------------------------------------
    def _batches(self, blobs: list[bytes]):
        """Indices sorted by length, cut into batches of at most ``max_batch_tokens`` tokens."""
        order = sorted(range(len(blobs)), key=lambda i: (len(blobs[i]), i))
        batch: list[int] = []
        packed_tokens = 0
        for i in order:
            n = len(blobs[i]) + 1
            # padded cost = rows * longest (sorted ascending: the newest is the longest);
            # packed cost = the tokens themselves
            cost = packed_tokens + n if self.packed else (len(batch) + 1) * n
            if batch and cost > self.max_batch_tokens:
                yield batch
                batch, packed_tokens = [], 0
            batch.append(i)
            packed_tokens += n
        if batch:
            yield batch

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 L2-normalized vectors, in input order."""
        blobs = [to_bytes(t, self.max_bytes) for t in texts]
        out = np.zeros((len(blobs), self.dim), dtype=np.float32)
        self.last_surprisal = {}
        for idx in self._batches(blobs):
            ids, layout = make_batch([blobs[i] for i in idx], self.packed, self.device)
            # fp32: boundaries do not move
            starts, sur = self.model.patch_starts_and_surprisal(ids, layout)
            sur = sur.cpu().numpy()
            pos = 0
            for i in idx:  # one value per real byte, events in batch order
                n = len(blobs[i])
                self.last_surprisal[texts[i]] = sur[pos:pos + n]
                pos += n
            with autocast(self.device, self.autocast_dtype):
                vec = self.encode_model.encode(ids, layout, starts).vector
            vec = torch.nn.functional.normalize(vec.float(), dim=-1)
            out[np.asarray(idx)] = vec.cpu().numpy()
            if self.device.type == "cpu":  # each sub-batch has new tensor sizes (see memory.py)
                release_freed_heap()
        return out

    @torch.inference_mode()
    def surprisal(self, text: str) -> np.ndarray:
        """Per-byte surprisal in bits, ``-log2 p(byte | earlier bytes of this text)``.

        One value per UTF-8 byte of the (truncated) text.
        """
        ids, layout = make_batch([to_bytes(text, self.max_bytes)], False, self.device)
        return self.model.entropy.surprisal(ids, layout).float().cpu().numpy()

    @torch.inference_mode()
    def patches(self, text: str) -> list[bytes]:
        """The text's patches (byte strings), as the model cuts it. Useful for explanations."""
        blob = to_bytes(text, self.max_bytes)
        ids, layout = make_batch([blob], False, self.device)
        starts = self.model.patch_starts(ids, layout).cpu().tolist()
        cuts = [i - 1 for i, s in enumerate(starts) if s and i > 0]  # token i = byte i - 1
        bounds = [0] + [c for c in cuts if c > 0] + [len(blob)]
        return [blob[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
