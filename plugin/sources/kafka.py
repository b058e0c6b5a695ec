"""Kafka as a source: one message is one event record, positioned by (topic, partition, offset).

The message's key, partition, offset and headers travel with the record as side metadata (kept
in the event's fields under `sysmon_blt_kafka`, never in the canonical text). What a message holds
is judged by normalization like any other record: a JSON object in a shape `import` reads, or one
raw event XML; anything else becomes a dead letter there.
"""

from __future__ import annotations

import logging
from typing import Any

from plugin.sources.base import RawRecord, SourceError

#: settings whose values are secrets: never logged
SECRET_MARKERS = ("password", "secret", "key", "token", "jaas")


def source_name(topic: str, partition: int) -> str:
    """How a partition names itself in `events.source` and in the flow's positions."""
    return f"kafka:{topic}/{partition}"


def record_of(msg: Any) -> RawRecord | SourceError:
    """A consumed confluent-kafka message as a record (or, for an empty one, a source error)."""
    source = source_name(msg.topic(), msg.partition())
    value = msg.value()
    if not value:
        return SourceError(source, msg.offset(), "empty message (no value)")
    key = msg.key()
    meta = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
            "key": key.decode("utf-8", "replace") if isinstance(key, bytes) else key}
    headers = msg.headers()
    if headers:
        meta["headers"] = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
                           for k, v in headers}
    return RawRecord(source, msg.offset(), value, meta)


def quiet_logger() -> logging.Logger:
    """A logger for librdkafka's own log (the `logger` setting): it logs every reconnect attempt
    to a dead broker, forever; our structured warnings say what matters instead."""
    quiet = logging.getLogger("sysmon_blt.kafka")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    return quiet


def redacted(settings: dict[str, Any]) -> dict[str, Any]:
    """librdkafka settings fit for a log line: secrets replaced by '***'."""
    return {k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v)
            for k, v in settings.items()}
