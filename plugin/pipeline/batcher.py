"""Micro-batching: flush by size, or by deadline when records trickle in (the streaming case)."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, max_size: int = 4096, max_wait_s: float = 1.0) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._items: list[T] = []
        self._first_at: float | None = None

    def add(self, item: T) -> list[T] | None:
        """Add one item; return a full batch when one is ready."""
        if not self._items:
            self._first_at = time.monotonic()
        self._items.append(item)
        if len(self._items) >= self.max_size:
            return self.flush()
        return None

    def due(self) -> bool:
        return bool(self._items) and self._first_at is not None and (
            time.monotonic() - self._first_at >= self.max_wait_s
        )

    def flush(self) -> list[T]:
        items, self._items, self._first_at = self._items, [], None
        return items

    def __len__(self) -> int:
        return len(self._items)
