"""The streaming consumer: Kafka in, the flow in the middle, offsets committed once durable.

    poll -> flow.feed -> micro-batch (size or deadline) -> stages -> sink -> commit offsets

At least once, duplicating nothing: a partition's offset is committed only after the flow reports
every record up to it durably written (`Flow.completed`), and the alerts producer is flushed
before that commit; a crash replays from the last commit and `event_key` makes the replay store
nothing twice. On a rebalance the revoked partitions' batches are flushed, written and committed
before they are given up; on stop (SIGTERM, SIGINT) everything fed is drained and committed.
Back-pressure: the flow takes at most `Flow.max_pending` batches (one embedding, one scored and
written); while they are all taken the consumer keeps filling the next batch, up to
`stream_batch_size`, so a busy flow gets bigger batches (the models' cost per text falls with
batch size) and the next one is ready the moment a slot frees. With that batch full too, it stops
taking messages and waits; stopped for longer than `PAUSE_AFTER_S` (5 s), it pauses its
partitions (it keeps polling, so the group sees it alive and rebalances still run) and resumes
them once a batch is written. A pause drops what librdkafka had prefetched for those partitions
(fetched again on resume): pausing for every short stall once cost ~400 ms per batch and capped
a consumer at ~600 events/s with idle cores, and stopping at every taken slot (without filling
the next batch) left the worker idle half the time at 1,000 events/s. librdkafka's own fetch
queue is bounded too (`queued.max.messages.kbytes`), so memory does not grow with the input rate
or the lag. Retention (`retention_days`) runs on the same thread as the writes, between batches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence

import structlog

from plugin.memory import active_allocator
from plugin.normalize.normalizer import Normalizer
from plugin.pipeline.batch import BatchStage
from plugin.pipeline.flow import Counts, Durable, Flow
from plugin.sources.kafka import quiet_logger, record_of, redacted
from plugin.store import Store, utcnow
from plugin.stream.learning import LearningPeriod
from plugin.stream.metrics import StreamMetrics

log = structlog.get_logger(__name__)

POLL_S = 0.05
#: how long the consumer may stop taking messages (every batch slot taken, the next batch
#: filled) before it pauses its partitions. Each pause drops librdkafka's prefetch and the resume
#: fetched again: at 0.25 s a consumer past its capacity paused on one batch in three and sat
#: idle ~0.5 s after each resume. A stall shorter than this only waits (librdkafka's fetch queue
#: is bounded, and its heartbeats run on their own thread); a longer one (a stuck sink) pauses,
#: so polling goes on and rebalances are served.
PAUSE_AFTER_S = 5.0
LAG_EVERY_S = 5.0
PRUNE_EVERY_S = 3600.0
# librdkafka's prefetch per consumer (its default is 64 MB): enough for seconds of traffic at
# thousands of events/s, and a bound on what a lagging consumer holds; a setting of the user's wins
FETCH_QUEUE_KB = 16384


@dataclass
class StreamSummary(Counts):
    batches: int = 0
    commits: int = 0
    seconds: float = 0.0
    pauses: int = 0
    committed: dict[str, int] = field(default_factory=dict)  # source -> next offset


class StreamConsumer:
    def __init__(self, store: Store, normalizer: Normalizer, stages: Sequence[BatchStage], *,
                 bootstrap: str, topics: Sequence[str], group: str,
                 settings: dict[str, Any] | None = None, batch_size: int = 256,
                 batch_ms: int = 100, producer=None, metrics: StreamMetrics | None = None,
                 retention_days: float = 0, learning: LearningPeriod | None = None,
                 pause_after_s: float = PAUSE_AFTER_S) -> None:
        self.store = store
        self.normalizer = normalizer
        self.stages = list(stages)
        self.topics = list(topics)
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.producer = producer  # the alerts producer, flushed before every commit
        self.conf = {"bootstrap.servers": bootstrap, "group.id": group,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "queued.max.messages.kbytes": FETCH_QUEUE_KB,
                     "logger": quiet_logger(), **(settings or {})}
        self.retention_days = retention_days
        self.pause_after_s = pause_after_s
        self.learning = learning
        self._prune_at = 0.0  # monotonic time of the next retention pass
        self._paused = False
        self.summary = StreamSummary()
        self.metrics = metrics or StreamMetrics()
        self._seen: dict[str, int] = {}  # stage totals already counted in the metrics
        self._lag_at = 0.0
        self._partitions: dict[str, tuple[str, int]] = {}
        self._consumer = None
        self._flow: Flow | None = None

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> StreamSummary:
        from confluent_kafka import Consumer

        t0 = time.monotonic()
        log.info("consumer_starting", topics=self.topics, allocator=active_allocator(),
                 settings=redacted({k: v for k, v in self.conf.items() if k != "logger"}))
        self._flow = Flow(self.store, self.normalizer, self.stages, batch_size=self.batch_size,
                          max_wait_s=self.batch_ms / 1000)
        self._consumer = Consumer(self.conf)
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not stop.is_set():
                # what the batch being filled still takes; while every slot is taken, one short
                # of a flush by size (which would wait for a slot without polling)
                take = self._flow.room() - int(self._flow.full())
                if take <= 0 and not self._paused:  # a short stall: wait, take nothing
                    self._flow.wait(POLL_S)
                    self._commit(self._flow.completed())
                    self._backpressure()
                    continue
                msgs = self._consumer.consume(num_messages=max(take, 1), timeout=POLL_S)
                self.metrics.records_in.inc(len(msgs))
                for m in msgs:
                    if m.error() is not None:
                        self._on_error(m.error())
                        continue
                    rec = record_of(m)
                    self._partitions[rec.source] = (m.topic(), m.partition())
                    self._flow.feed(rec)
                if not self._flow.full() and (self._flow.due()
                                              or (not msgs and self._flow.pending())):
                    self._flow.flush()
                self._commit(self._flow.completed())
                self._backpressure()
                if time.monotonic() - self._lag_at >= LAG_EVERY_S:
                    self._measure_lag()
                if self.retention_days > 0 and time.monotonic() >= self._prune_at:
                    self._prune()
                if self.learning is not None and self.learning.due():
                    self._end_learning()
            log.info("consumer_stopping", reason="signal")
            self._drain()
        finally:
            self._consumer.close()
            self._flow.close()
            self.summary.batches = self._flow.seq
            self.summary.seconds = round(time.monotonic() - t0, 3)
        return self.summary

    def _drain(self) -> None:
        """Write everything fed, then commit it."""
        self._flow.flush()
        self.summary.add(self._flow.drain())
        self._commit(self._flow.completed())

    def _backpressure(self) -> None:
        """Pause fetching once every batch slot of the flow has been taken, and the next batch
        filled, for ``pause_after_s``; resume once a slot frees."""
        taken = self._flow.full() and self._flow.room() <= 1
        now = time.monotonic()
        if not taken:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        full = taken and now - self._full_since >= self.pause_after_s
        if full == self._paused:
            return
        assigned = self._consumer.assignment()
        if full:
            self._consumer.pause(assigned)
            self.summary.pauses += 1
            self.metrics.pauses.inc()
            log.info("partitions_paused", reason="models and sink behind",
                     batches_in_flight=self._flow.in_flight())
        else:
            self._consumer.resume(assigned)
            log.info("partitions_resumed")
        self._paused = full
        self.metrics.paused.set(int(full))

    def _prune(self) -> None:
        """Retention: drop events (with their vectors and scores) older than ``retention_days``,
        on the flow's thread between batches; alerts, fits and imports stay."""
        self._prune_at = time.monotonic() + PRUNE_EVERY_S
        before = utcnow() - timedelta(days=self.retention_days)

        def prune() -> None:
            removed = self.store.prune(before)
            for table, n in removed.items():
                self.metrics.pruned.labels(table).inc(n)
            log.info("retention_pruned", before=before.isoformat(), **removed)

        self._flow.after_batches(prune)

    def _end_learning(self) -> None:
        """Fit on the learning window and switch the scorers, on the stage thread after the
        batches already flushed (a failed fit is logged; the cold start keeps scoring)."""
        self.learning.scheduled = True

        def fit() -> None:
            try:
                self.learning.run()
                self.metrics.learning.set(0)
            except ValueError as exc:
                log.warning("learning_fit_failed", reason=str(exc))

        self._flow.after_batches(fit)

    def _on_assign(self, consumer, partitions) -> None:
        log.info("partitions_assigned", partitions=[f"{p.topic}/{p.partition}" for p in partitions])
        # librdkafka keeps a partition's pause across revoke and assign: one paused for
        # back-pressure when a rebalance came would never fetch again (seen when an instance of
        # a group died), so a new assignment is resumed explicitly; the loop pauses it if need be
        consumer.resume(partitions)
        self._paused = False
        self.metrics.paused.set(0)
        self.metrics.joined()

    def _measure_lag(self) -> None:
        """Consumer lag per assigned partition (high watermark - position), from librdkafka's
        cached watermarks: no broker round trip in the loop."""
        self._lag_at = time.monotonic()
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(high - tp.offset)
        except Exception as exc:  # metrics must never stop the stream
            log.debug("lag_unavailable", error=str(exc))

    def _on_revoke(self, consumer, partitions) -> None:
        log.info("partitions_revoked", partitions=[f"{p.topic}/{p.partition}" for p in partitions])
        if self._flow is not None:
            self._drain()

    def _on_error(self, err) -> None:
        from confluent_kafka import KafkaException

        if err.fatal():
            raise KafkaException(err)
        log.warning("kafka_error", error=str(err))

    # -- commits -------------------------------------------------------------------------------
    def _commit(self, durable: list[Durable]) -> None:
        """Commit, per partition, the offset after the highest one durably written."""
        self.metrics.batches_in_flight.set(self._flow.in_flight())
        if not durable:
            return
        from confluent_kafka import KafkaException, TopicPartition

        now = time.monotonic()
        for d in durable:
            self.metrics.events_stored.inc(d.new_events)
            if self.learning is not None:
                self.learning.observe(d.new_events)
            self.metrics.dead_letters.inc(d.dead_letters)
            self.metrics.batch_seconds.observe(now - d.started)
        for counter, attr, only in ((self.metrics.outliers, "outliers", "alerts"),
                                    (self.metrics.alerts_published, "published", None),
                                    (self.metrics.alerts_suppressed, "suppressed", None)):
            total = sum(getattr(st, attr, 0) for st in self.stages
                        if only is None or getattr(st, only, False))
            counter.inc(total - self._seen.get(attr, 0))
            self._seen[attr] = total

        upto: dict[str, int] = {}
        for d in durable:
            for source, pos in d.positions.items():
                upto[source] = max(upto.get(source, -1), pos)
        offsets = [TopicPartition(*self._partitions[s], pos + 1) for s, pos in upto.items()
                   if s in self._partitions]
        if not offsets:
            return
        if self.producer is not None:
            left = self.producer.flush(10)
            if left:  # alerts not yet out: keep the offsets, so a restart publishes them again
                log.warning("alerts_not_delivered", pending=left)
                return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. the partition moved to another consumer
            log.warning("commit_failed", error=str(exc))
            return
        self.summary.commits += 1
        for s, pos in upto.items():
            self.summary.committed[s] = pos + 1

