"""BackgroundWriter: writes run in order on one thread, at most `max_pending` in flight, and
failures come back to the caller (drain / close) instead of vanishing on the sink thread."""

from __future__ import annotations

import threading

import pytest

from plugin.pipeline.writer import BackgroundWriter

WAIT = 5.0  # generous upper bound for things that must happen; never reached when all is well


def test_results_come_back_in_submission_order():
    w = BackgroundWriter(max_pending=64)
    ran: list[int] = []
    lock = threading.Lock()
    gate = threading.Event()
    releaser = threading.Timer(0.1, gate.set)

    def write(i: int) -> int:
        if i == 0:  # the first write is slow: nothing may overtake it
            assert gate.wait(WAIT)
        with lock:
            ran.append(i)
        return i * 10

    releaser.start()
    try:
        futs = [w.submit(write, i) for i in range(50)]
        w.drain()
        assert all(f.done() for f in futs)
        assert [f.result() for f in futs] == [i * 10 for i in range(50)]
        assert ran == list(range(50))  # one sink thread: executed in submission order too
    finally:
        gate.set()
        w.close()


def test_submit_blocks_while_max_pending_writes_are_in_flight():
    w = BackgroundWriter(max_pending=2)
    gate = threading.Event()
    started = threading.Event()

    def slow(i: int) -> int:
        started.set()
        assert gate.wait(WAIT)
        return i

    try:
        first = w.submit(slow, 0)
        second = w.submit(slow, 1)  # queued behind the first: two in flight now
        assert started.wait(WAIT)
        third_submitted = threading.Event()
        box: list = []

        def producer() -> None:
            box.append(w.submit(slow, 2))
            third_submitted.set()

        t = threading.Thread(target=producer, daemon=True)
        t.start()
        # back-pressure: the third submit waits for a free slot
        assert not third_submitted.wait(0.2)
        assert not first.done() and not second.done()
        gate.set()  # the writes finish, slots free up, the producer gets through
        assert third_submitted.wait(WAIT)
        t.join(WAIT)
        w.drain()
        assert [f.result() for f in (first, second, box[0])] == [0, 1, 2]
    finally:
        gate.set()
        w.close()


def test_a_slot_frees_as_soon_as_a_write_finishes():
    w = BackgroundWriter(max_pending=1)

    def producer() -> None:
        for i in range(20):  # each done write gives its slot back, so this never blocks for good
            w.submit(lambda i=i: i)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "submit never got a slot back"
    w.drain()
    w.close()


def test_drain_reraises_the_first_failure_and_forgets_it():
    w = BackgroundWriter(max_pending=4)
    try:
        ok = w.submit(lambda: "ok")
        w.submit(_raise, ValueError("first"))
        w.submit(_raise, RuntimeError("second"))
        with pytest.raises(ValueError, match="first"):
            w.drain()
        assert ok.result(WAIT) == "ok"
        # the failures were reported once; the writer goes on working
        later = w.submit(lambda: 7)
        w.drain()
        assert later.result() == 7
    finally:
        w.close()


def test_drain_waits_for_every_write_even_after_a_failure():
    """drain once returned at the first failure while later writes still ran."""
    w = BackgroundWriter(max_pending=4)
    gate = threading.Event()
    try:
        w.submit(_raise, ValueError("first"))
        after = w.submit(lambda: gate.wait(WAIT))
        releaser = threading.Timer(0.2, gate.set)
        releaser.start()
        with pytest.raises(ValueError):
            w.drain()
        assert after.done()
    finally:
        gate.set()
        w.close()


def test_close_drains_every_pending_write_then_stops():
    w = BackgroundWriter(max_pending=2)
    gate = threading.Event()
    done: list[int] = []

    def slow(i: int) -> None:
        assert gate.wait(WAIT)
        done.append(i)

    futs = [w.submit(slow, i) for i in range(2)]
    releaser = threading.Timer(0.1, gate.set)  # close must wait for these
    releaser.start()
    w.close()
    assert done == [0, 1] and all(f.done() and f.exception() is None for f in futs)
    releaser.join()
    assert isinstance(_submit_after_close(w), RuntimeError)  # the sink thread is gone


def test_close_reraises_a_failure_and_still_stops_the_thread():
    w = BackgroundWriter()
    w.submit(_raise, OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        w.close()
    assert isinstance(_submit_after_close(w), RuntimeError)


def _raise(exc: BaseException):
    raise exc


def _submit_after_close(w: BackgroundWriter) -> BaseException | None:
    """What a submit to a closed writer raises (on a helper thread, so a lost slot cannot hang
    the test)."""
    box: list[BaseException | None] = []

    def go() -> None:
        try:
            w.submit(lambda: None)
            box.append(None)
        except BaseException as exc:  # noqa: BLE001 - the very thing under test
            box.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(WAIT)
    assert box, "submit after close blocked"
    return box[0]


def test_ahead_work_overlaps_the_write_before_it_and_keeps_order():
    """The model call of batch N+1 runs while batch N is being written; both threads keep the
    submission order, and a write never starts before its own ahead work finished."""
    w = BackgroundWriter(max_pending=2, ahead=True)
    log: list[str] = []
    lock = threading.Lock()
    write0_running = threading.Event()
    ahead1_ran = threading.Event()

    def note(what: str) -> None:
        with lock:
            log.append(what)

    def ahead(i: int):
        def run() -> None:
            note(f"ahead{i}")
            if i == 1:
                ahead1_ran.set()
        return run

    def write(i: int) -> int:
        note(f"write{i}-start")
        if i == 0:
            write0_running.set()
            # the next batch's ahead work must get done while this write still runs
            assert ahead1_ran.wait(WAIT)
        note(f"write{i}-end")
        return i

    try:
        futs = [w.submit(write, i, ahead=ahead(i)) for i in range(4)]
        w.drain()
        assert [f.result() for f in futs] == [0, 1, 2, 3]
        assert log.index("ahead1") < log.index("write0-end")
        for i in range(4):
            assert log.index(f"ahead{i}") < log.index(f"write{i}-start")
        assert [x for x in log if x.startswith("write") and x.endswith("start")] == \
            [f"write{i}-start" for i in range(4)]
    finally:
        w.close()


def test_a_failed_ahead_fails_its_write_and_the_write_does_not_run():
    w = BackgroundWriter(max_pending=2, ahead=True)
    wrote: list[int] = []

    def boom() -> None:
        raise RuntimeError("model call failed")

    try:
        fut = w.submit(wrote.append, 1, ahead=boom)
        with pytest.raises(RuntimeError, match="model call failed"):
            fut.result(WAIT)
        assert wrote == []
        with pytest.raises(RuntimeError, match="model call failed"):
            w.drain()
    finally:
        w._pending.clear()
        w.close()
