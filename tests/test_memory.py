"""The heap trim between inference batches runs only when resident memory has grown."""

from __future__ import annotations

import pytest

from plugin import memory

pytestmark = pytest.mark.skipif(memory._MALLOC_TRIM is None or memory.resident_bytes() is None,
                                reason="needs glibc and /proc (Linux)")


def test_trim_waits_for_growth(monkeypatch):
    monkeypatch.setattr(memory, "TRIM_SLACK_BYTES", 16 * 2**20)
    assert memory.release_freed_heap(force=True)
    # nothing grew: every further batch skips the trim (the page faults it would cost)
    assert not memory.release_freed_heap()
    assert not memory.release_freed_heap()
    held = bytearray(64 * 2**20)  # zero-filled: resident once touched
    held[::4096] = b"\x01" * len(held[::4096])
    assert memory.release_freed_heap()  # grew past the slack: trimmed, new level noted
    assert not memory.release_freed_heap()
    del held


def test_resident_bytes_is_plausible():
    rss = memory.resident_bytes()
    assert rss is not None and 10 * 2**20 < rss < 64 * 2**30
