"""Sinks: where simulated records go, a JSON-lines file (or stdout) or a Kafka topic.

Why a module of its own: these are the only parts of the simulator that do I/O (files, the
network, sleeping for a rate limit); everything else is pure computation and can be tested
without them.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

import orjson

from plugin.sources.kafka import quiet_logger

from .event import LABEL_KEY
from .shapes import simulate_records

__all__ = ["Tally", "produce_kafka", "write_jsonl"]

BROKER_TIMEOUT_S = 5.0


@dataclass
class Tally:
    """What a sink wrote: records, and how many carry an injected anomaly (small runs may have
    none: hosts boot first), so the caller can say so."""

    records: int = 0
    anomalies: int = 0

    def add(self, rec: dict[str, Any]) -> None:
        self.records += 1
        if (rec.get(LABEL_KEY) or {}).get("anomaly"):
            self.anomalies += 1


def write_jsonl(path: str | os.PathLike[str], n: int, tally: Tally | None = None, **kw: Any) -> int:
    """Write `n` records as JSON lines to `path` ("-" = stdout); returns the count."""
    dumps = orjson.dumps
    count = 0
    out: IO[bytes]
    if str(path) == "-":
        out = sys.stdout.buffer
        close = False
    else:
        out = open(path, "wb", buffering=1 << 20)
        close = True
    try:
        buf: list[bytes] = []
        for rec in simulate_records(n=n, **kw):
            buf.append(dumps(rec))
            count += 1
            if tally is not None:
                tally.add(rec)
            if len(buf) >= 2048:
                out.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            out.write(b"\n".join(buf) + b"\n")
        out.flush()
    finally:
        if close:
            out.close()
    return count


def produce_kafka(bootstrap: str, topic: str, n: int, rate: float | None = None,
                  producer_config: dict[str, Any] | None = None, tally: Tally | None = None,
                  **kw: Any) -> int:
    """Produce `n` records to Kafka (key = computer, value = JSON bytes), at most `rate` per second.

    Flushes at the end; raises RuntimeError naming the broker if any delivery fails.
    """
    from confluent_kafka import KafkaException, Producer

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "linger.ms": 20,
                            "compression.type": "lz4", "message.timeout.ms": 60000}
    conf.update(producer_config or {})
    # librdkafka retries a dead broker forever and logs every attempt to stderr: route its log
    # to a silent logger, and ask the broker once, with a deadline, before producing anything
    conf.setdefault("logger", quiet_logger())
    try:
        producer = Producer(conf)
    except KafkaException as exc:
        raise RuntimeError(f"cannot create a Kafka producer for {bootstrap}: {exc}") from exc
    try:
        producer.list_topics(timeout=BROKER_TIMEOUT_S)
    except KafkaException as exc:
        raise RuntimeError(f"no Kafka broker answers at {bootstrap} within {BROKER_TIMEOUT_S:.0f} s "
                           "(is it running, and is HOST:PORT its advertised listener?)") from exc
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(str(err))

    dumps = orjson.dumps
    sent = 0
    t0 = time.monotonic()
    for rec in simulate_records(n=n, **kw):
        if errors:
            break
        key = (rec.get("winlog", {}).get("computer_name") or rec.get("Hostname")
               or rec.get("Event", {}).get("System", {}).get("Computer") or "").encode()
        value = dumps(rec)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
        if tally is not None:
            tally.add(rec)
        producer.poll(0)
        if rate and rate > 0:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(max(30.0, conf.get("message.timeout.ms", 60000) / 1000 + 5))
    if errors:
        raise RuntimeError(f"Kafka delivery to {bootstrap} (topic {topic}) failed: {errors[0]}")
    if remaining:
        raise RuntimeError(f"Kafka delivery to {bootstrap} (topic {topic}) failed: "
                           f"{remaining} message(s) not delivered")
    return sent
