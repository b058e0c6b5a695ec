"""Device and precision choices shared by the embedders (inference) and the trainers.

Kept apart from the models so that training can resolve its bf16 setting without importing an
inference module, and both embedders decide device and precision the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# oneDNN (the CPU bf16 matmuls) caches a compiled primitive, with its buffers, per distinct
# shape, up to 1024 of them. Every batch of texts has a new (rows x length) shape, so the cache
# only grows: embedding 10k real OTRF texts took RSS from 320 MB to 1.5 GB (~70 MB per 1000
# texts, never freed). A cache of 8 keeps the hits inside one batch (the layers of a stack share
# shapes) and held RSS at ~630 MB after 5k texts (vs 1.28 GB), at no measurable speed cost.
# oneDNN reads the variable at its first primitive, so setting it here (imported by every
# embedder and trainer, before any inference or training step) is enough; a value set by the
# user wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 instructions (AVX512-BF16 or AMX), where bf16 matmuls
    run several times faster than fp32; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def wants_cpu_bf16(setting: bool | str) -> bool:
    """A bf16 setting (True, False or "auto") resolved: "auto" means where the CPU has native
    bf16."""
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


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The autocast context `inference_setup` chose (disabled when it chose none)."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)
