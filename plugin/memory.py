"""Bounding what a process holds: freed heap returned to the system between inference batches,
and least-recently-used bounds for per-text state.

Every embed call allocates tensors of new sizes; glibc keeps the freed blocks, fragmented, so
without a trim a full OTRF import held 1.29 GB of free-but-kept heap (measured with mallinfo) on
top of what it used. A trim returns those pages, but the next batch then faults its working set
back in, page by page: trimming after every batch cost the BLT 30% of its throughput (3,000
distinct OTRF texts on 2 cores, fp32: 171 texts/s against 241 untrimmed). So a trim runs only
once the process's resident memory has grown `TRIM_SLACK_BYTES` past what it held right after the
previous trim. The peak does not rise for it: a batch's own working set peaks about that far
above the trimmed level anyway (the same run: peak RSS 551 MB trimming every batch, 633 MB with
the slack, at 219-255 texts/s). A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: how far resident memory may grow past its level after the last trim before the next one
TRIM_SLACK_BYTES = 256 * 2**20


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_after_last_trim: int | None = None  # resident bytes right after the latest trim


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc cannot say."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def release_freed_heap(force: bool = False) -> bool:
    """Return freed heap to the system when resident memory has grown `TRIM_SLACK_BYTES` since
    the last trim (always with ``force``, or where the resident size cannot be read). Returns
    whether it trimmed. Cheap when it does not: one read of /proc/self/statm."""
    global _after_last_trim
    if _MALLOC_TRIM is None:
        return False
    now = resident_bytes()
    if not force and now is not None and _after_last_trim is not None \
            and now <= _after_last_trim + TRIM_SLACK_BYTES:
        return False
    _MALLOC_TRIM(0)
    _after_last_trim = resident_bytes()
    return True


class LRU(OrderedDict[K, V]):
    """A mapping that keeps its ``max_entries`` most recently used entries.

    The per-text state of a long-running consumer (vectors, scores) must stop growing with the
    stream's distinct texts, and dropping it all at once when a bound is reached (the earlier
    clear-when-full) made every routine text pay a database read and a model pass again in the
    same batch. Here a routine text stays, because it is used again and again; a text seen once
    is the first out. `get` and item reads count as a use; `in` does not."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        super().__init__()
        self.max_entries = max_entries

    def __getitem__(self, key: K) -> V:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key: K, default: V | None = None) -> V | None:
        if key in self:
            return self[key]
        return default

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)
