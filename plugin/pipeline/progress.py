"""Progress on stderr: a bar on a terminal, a periodic structured log line elsewhere."""

from __future__ import annotations

import sys
import time

import structlog

log = structlog.get_logger(__name__)


class Progress:
    def __init__(self, total_bytes: int, enabled: bool = True, every_s: float = 10.0) -> None:
        self.done = 0
        self.events = 0
        self._bar = None
        self._last = time.monotonic()
        self._every = every_s
        self._enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, file=sys.stderr,
                             desc="import", dynamic_ncols=True)

    def advance(self, nbytes: int, events: int, current: str) -> None:
        self.done += nbytes
        self.events += events
        if self._bar is not None:
            self._bar.update(nbytes)
            self._bar.set_postfix(events=self.events, refresh=False)
        elif self._enabled and time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            log.info("import_progress", bytes_done=self.done, events=self.events, current=current)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
