"""Bounding what a process holds: freed heap returned to the system between inference batches,
and least-recently-used bounds for per-text state.

Every embed call allocates tensors of new sizes; glibc keeps the freed blocks, fragmented, so
without this a full OTRF import held 1.29 GB of free-but-kept heap (measured with mallinfo) on
top of what it used. A trim costs about a millisecond; it runs once per inference batch, never
per tensor. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_trim()


def release_freed_heap() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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
