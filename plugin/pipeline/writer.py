"""Batch work (the stages, then the sink's write) on one background thread, so the models and
DuckDB's insert work (both release the GIL) overlap the next batch's parsing and normalization.
Optionally a second thread runs each batch's model calls (``ahead``) one step in front of it, in
the same order: batch N+1 is embedded while batch N is scored and written. At most `max_pending`
batches are in flight, both threads together: back-pressure that bounds memory whatever the
input size."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

T = TypeVar("T")


class BackgroundWriter:
    def __init__(self, max_pending: int = 2, *, ahead: bool = False) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed") if ahead else None
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., T], *args: object,
               ahead: Callable[[], object] | None = None) -> Future[T]:
        """Run ``fn(*args)`` on the sink thread after every earlier submission; ``ahead`` first,
        on the ahead thread (as soon as the batches before it have had theirs). A failed
        ``ahead`` fails this submission: ``fn`` does not run."""
        self._slots.acquire()
        if ahead is not None and self._ahead is not None:
            first = self._ahead.submit(ahead)

            def then() -> T:
                first.result()  # re-raises the model call's failure
                return fn(*args)

            fut = self._pool.submit(then)
        else:
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
            if self._ahead is not None:
                self._ahead.shutdown(wait=True)
