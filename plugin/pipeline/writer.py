"""Batch work (the stages, then the sink's write) on one background thread, so the models and
DuckDB's insert work (both release the GIL) overlap the next batch's parsing and normalization.
At most `max_pending` batches wait: back-pressure that bounds memory whatever the input size."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

T = TypeVar("T")


class BackgroundWriter:
    def __init__(self, max_pending: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        self._slots.acquire()
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(lambda _f: self._slots.release())
        self._pending.append(fut)
        return fut

    def drain(self) -> None:
        """Wait for every submitted write; re-raise the first failure."""
        pending, self._pending = self._pending, []
        wait(pending)  # all of them, even after a failure: no write may still run behind us
        for fut in pending:
            fut.result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)
