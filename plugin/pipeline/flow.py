"""The flow: records in, durable batches out. The one seam every entry point feeds.

    record -> normalize -> (time filter, in-batch dedupe) -> micro-batch -> stages -> sink -> durable

`import` wraps it in file custody (SHA-256, `imports` rows); `rescore` feeds it stored events
(normalization already done, events not rewritten); a Kafka consumer feeds it records and commits
a partition's offset once the batch holding it is durable. Nothing is lost on bad input: a record
that cannot be normalized becomes a dead letter in the same batch as its neighbours.

Durability is reported per batch, in order: the stages and the sink run on one background thread,
batch after batch in the order they were flushed, so the next batch's parsing and normalization
overlap this one's stages and DuckDB's insert work. One thread keeps the stages' order: scoring
sees each host's events in log order, and no stage state is touched by two threads. The model
calls are the exception, run one batch ahead: a stage's `prepare` half (embedding: no store, no
state another stage reads) runs on a second thread, in flush order, so batch N+1 is embedded
while batch N is scored and written (torch and the embedding workers release the GIL). Measured
on 2 cores before this split, a consumer at 1,000 events/s kept its worker 83% busy and itself
29%, each waiting on the other. At most `max_pending` batches are in flight, both threads
together (back-pressure).
A `Durable` carries, per source, the highest position fed since the previous flush, so whoever
commits positions (Kafka offsets, import checkpoints) never moves past an unwritten record.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Callable, Sequence

import structlog

from plugin.normalize.normalizer import NOT_SYSMON, NormalizedEvent, Normalizer
from plugin.normalize.shapes import BadRecord
from plugin.pipeline.batch import Batch, BatchStage
from plugin.pipeline.batcher import Batcher
from plugin.pipeline.writer import BackgroundWriter
from plugin.sources.base import RawRecord, SourceError, truncate_payload
from plugin.store import EVENT_COLUMNS, DeadLetter, Store, utcnow

log = structlog.get_logger(__name__)

MAX_DEAD_SHOWN = 5


@dataclass
class Counts:
    """What happened to the records fed so far (summed per input by `import`)."""

    records: int = 0
    sysmon_events: int = 0
    new_events: int = 0
    duplicates: int = 0
    skipped_non_sysmon: int = 0
    dead_letters: int = 0
    filtered_by_time: int = 0

    def add(self, other: "Counts") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass(frozen=True)
class Durable:
    """One batch, durably written. ``positions``: per source, the highest position fed into the
    flow since the previous batch (records that were skipped or dead-lettered included)."""

    seq: int
    events: int
    new_events: int
    dead_letters: int
    positions: dict[str, int] = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() of the batch's first record (batch latency)


def dead_letter(err: SourceError) -> DeadLetter:
    return DeadLetter(err.source, err.position, err.reason, truncate_payload(err.payload))


def event_rows(events: Sequence[NormalizedEvent], imported_at: datetime) -> dict[str, list]:
    """Events as the sink's column lists (one Arrow batch)."""
    cols: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    for e in events:
        for c in EVENT_COLUMNS[:-1]:
            cols[c].append(getattr(e, c))
    cols["imported_at"] = [imported_at] * len(events)
    return cols


class Flow:
    """Normalize, batch, run the stages, write; report each batch when it is durable.

    ``normalizer`` None: the flow takes only events already normalized (`add`), as `rescore`
    does. ``store_events`` False: the sink writes what the stages add (vectors, scores, alerts)
    but not the events themselves, which are stored already. ``max_wait_s``: a batch is `due`
    that long after its first event, for sources that trickle (the caller polls `due`).
    """

    def __init__(self, store: Store, normalizer: Normalizer | None,
                 stages: Sequence[BatchStage] = (), *, batch_size: int = 5000,
                 max_wait_s: float | None = None, since: datetime | None = None,
                 until: datetime | None = None, store_events: bool = True,
                 progress: Callable[[int], None] | None = None,
                 on_durable: Callable[[Durable], None] | None = None,
                 max_pending: int = 2) -> None:
        self.store = store
        self.normalize = normalizer
        self.stages = list(stages)
        self.since = since
        self.until = until
        self.store_events = store_events
        self.progress = progress
        self.on_durable = on_durable
        self.counts = Counts()
        #: the run's first dead letters, for a message that says what could not be read
        self.first_dead: list[DeadLetter] = []
        self._batcher: Batcher[NormalizedEvent] = Batcher(
            batch_size, max_wait_s if max_wait_s is not None else math.inf)
        self._keys: set[str] = set()
        self._dead: list[DeadLetter] = []
        self._positions: dict[str, int] = {}
        self._started: float | None = None  # first record since the last flush
        self._inflight: deque[tuple[Future, int]] = deque()  # (write, events), not yet counted
        self._ready: list[Durable] = []  # written and counted, not yet handed out
        self.seq = 0  # batches handed to the sink so far
        self.max_pending = max_pending
        self._prepares = [st.prepare for st in self.stages if callable(getattr(st, "prepare", None))]
        self._writer = BackgroundWriter(max_pending, ahead=bool(self._prepares))

    # -- in ----------------------------------------------------------------------------------
    def feed(self, item: RawRecord | SourceError) -> None:
        """One record from a source (or the source's error for an unreadable part)."""
        self._saw(item.source, item.position)
        if isinstance(item, SourceError):
            self.dead_letter(dead_letter(item))
            return
        self.counts.records += 1
        try:
            out = self.normalize(item)
        except BadRecord as exc:
            self.dead_letter(DeadLetter(item.source, item.position, str(exc),
                                        truncate_payload(item.data)))
            return
        except Exception as exc:  # a bug must cost one record, never the run
            log.exception("normalize_internal_error", source=item.source, position=item.position)
            self.dead_letter(DeadLetter(item.source, item.position,
                                        f"internal error: {type(exc).__name__}: {exc}",
                                        truncate_payload(item.data)))
            return
        if out is NOT_SYSMON:
            self.counts.skipped_non_sysmon += 1
            return
        self.counts.sysmon_events += 1
        if out.ts is not None and ((self.since is not None and out.ts < self.since)
                                   or (self.until is not None and out.ts >= self.until)):
            self.counts.filtered_by_time += 1
            return
        self.add(out)

    def add(self, event: NormalizedEvent) -> None:
        """One normalized event; flushes when the batch is full. A twin already in this batch
        counts as a duplicate (across batches, the sink's key does the same)."""
        self._saw(event.source, event.position)
        if event.event_key in self._keys:
            self.counts.duplicates += 1
            return
        self._keys.add(event.event_key)
        full = self._batcher.add(event)
        if full is not None:
            self._submit(full)

    def dead_letter(self, dead: DeadLetter) -> None:
        self._dead.append(dead)
        self.counts.dead_letters += 1
        if len(self.first_dead) < MAX_DEAD_SHOWN:
            self.first_dead.append(dead)

    def _saw(self, source: str, position: int | None) -> None:
        if self._started is None:
            self._started = time.monotonic()
        if position is not None and position > self._positions.get(source, -1):
            self._positions[source] = position

    # -- out ---------------------------------------------------------------------------------
    def pending(self) -> bool:
        """Anything fed since the last flush: events, dead letters, or positions alone (records
        that were skipped still have to be handed out once written)."""
        return bool(len(self._batcher) or self._dead or self._positions)

    def due(self) -> bool:
        """A batch has waited `max_wait_s` since its first event."""
        return self._batcher.due()

    def flush(self) -> Future | None:
        """Run the stages on what is batched and hand it to the sink; returns the future of its
        `Durable` (None when nothing was fed since the last flush)."""
        events = self._batcher.flush()
        return self._submit(events)

    def _submit(self, events: list[NormalizedEvent]) -> Future | None:
        dead, positions, started = self._dead, self._positions, self._started
        self._dead, self._positions, self._keys, self._started = [], {}, set(), None
        if not events and not dead and not positions:
            return None
        b = Batch(events, dead)
        self.seq += 1
        seq = self.seq

        def prepare() -> None:
            for run_ahead in self._prepares:
                run_ahead(b)

        def write() -> Durable:
            for stage in self.stages:
                stage(b)
            rows = event_rows(b.events, utcnow()) if b.events and self.store_events else {}
            new = 0
            if rows or b.dead or b.vectors or b.assignments or b.alerts or b.incidents:
                new = self.store.write_batch(rows, b.dead, b.vectors, b.assignments, b.alerts,
                                             incidents=b.incidents)
            return Durable(seq, len(b.events), new, len(b.dead), positions,
                           started if started is not None else time.monotonic())

        fut = self._writer.submit(write, ahead=prepare if self._prepares else None)
        if self.on_durable is not None:
            fut.add_done_callback(self._notify)
        self._inflight.append((fut, len(b.events)))
        if self.progress is not None:
            self.progress(len(b.events))
        return fut

    def _notify(self, fut: Future) -> None:
        if fut.exception() is None:
            self.on_durable(fut.result())

    def completed(self) -> list[Durable]:
        """Batches written since the last call, in order, stopping at the first still in flight
        (so positions are handed out only behind everything before them). Re-raises a failed
        write: nothing after it may be committed."""
        self._collect()
        out, self._ready = self._ready, []
        return out

    def in_flight(self) -> int:
        """Batches handed to the stages and sink and not yet written."""
        return sum(1 for fut, _ in self._inflight if not fut.done())

    def wait(self, timeout: float) -> None:
        """Block until a batch in flight is written (or ``timeout`` seconds): a source that
        stops taking input while `full` waits here instead of spinning beside the stages."""
        from concurrent.futures import FIRST_COMPLETED, wait

        pending = [fut for fut, _ in self._inflight if not fut.done()]
        if pending:
            wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)

    def room(self) -> int:
        """Events the batch being filled still takes before it flushes by size (a flush while
        `full` would wait for a slot)."""
        return max(0, self._batcher.max_size - len(self._batcher))

    def full(self) -> bool:
        """The next flush would wait for the sink: a source that can (Kafka) pauses instead."""
        return self.in_flight() >= self.max_pending

    def drain(self) -> Counts:
        """Wait for every batch handed to the sink; returns the counts since the last drain
        (new events and cross-batch duplicates known only now) and starts new ones."""
        self._writer.drain()
        self._collect()
        counts, self.counts = self.counts, Counts()
        return counts

    def _collect(self) -> None:
        """Count the written batches at the head of the queue, in order, and keep them for
        `completed`; stops at the first still in flight (re-raises a failed write)."""
        while self._inflight and self._inflight[0][0].done():
            fut, n = self._inflight[0]
            d = fut.result()
            self._inflight.popleft()
            self.counts.new_events += d.new_events
            if self.store_events:
                self.counts.duplicates += n - d.new_events
            self._ready.append(d)

    def after_batches(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` on the stage-and-sink thread once the batches flushed so far are written
        (store maintenance, such as retention, without a second thread on the connection)."""
        return self._writer.submit(fn)

    def close(self) -> None:
        """Wait for the sink and stop its thread (what is still batched is not written: flush
        first)."""
        self._writer.close()
