"""Logging set-up: structlog writes to whatever stderr is now."""

from __future__ import annotations

import io
import sys

import structlog


def test_a_stderr_swapped_and_closed_after_configure_does_not_break_logging(monkeypatch):
    """A command configured logging while stderr was one stream; that stream was closed and
    replaced (pytest's capture between tests, a daemon's redirect). Later warnings go to the
    new stderr instead of raising "I/O operation on closed file" (they once failed six tests
    that ran after a CLI test)."""
    from plugin.logs import configure

    old = io.StringIO()
    monkeypatch.setattr(sys, "stderr", old)
    configure(0, "json")
    old.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    structlog.get_logger("t").warning("still_heard", n=1)
    assert '"event": "still_heard"' in now.getvalue()
    configure(0, "console")
