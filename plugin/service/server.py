"""Hosting the app: uvicorn on a thread of its own beside the consumer loop, or in the
foreground for `serve`. Loopback unless a host is given."""

from __future__ import annotations

import threading
import time

import structlog
import uvicorn
from fastapi import FastAPI

from plugin.errors import UsageError

log = structlog.get_logger(__name__)


def parse_listen(value: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); host defaults to loopback."""
    host, _, port = value.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise UsageError(f"--serve {value!r}: expected [HOST:]PORT") from None
    if not 0 < p < 65536:
        raise UsageError(f"--serve {value!r}: port must be 1..65535")
    return host or "127.0.0.1", p


class BackgroundServer:
    """uvicorn on a daemon thread; `stop` asks it to finish and waits a little."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError(f"HTTP server did not start on {self.server.config.host}:"
                               f"{self.server.config.port} (port in use?)")
        log.info("http_serving", host=self.server.config.host, port=self.server.config.port)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
