"""The normalize stage: one raw record in, one event row, a skip, or a dead letter out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from plugin.normalize.schema import SchemaSet
from plugin.normalize.shapes import BadRecord, parse_and_map
from plugin.normalize.text import CanonicalText
from plugin.sources.base import RawRecord


@dataclass(slots=True)
class NormalizedEvent:
    event_key: str
    source: str
    position: int
    event_id: int
    computer: str | None
    user_name: str | None
    ts: datetime | None
    record_id: int | None
    channel: str | None
    shape: str
    normalized: str
    text_hash: str
    fields: str  # JSON
    raw: str


#: the side key in `fields` that carries a record's transport metadata (Kafka key, partition,
#: offset, headers): stored with the event, never part of its canonical text
SOURCE_META_KEY = "sysmon_blt_kafka"


class NotSysmon:
    """Marker: the record is a valid Windows event from another provider (counted, not stored)."""


NOT_SYSMON = NotSysmon()


def _default(obj: Any) -> Any:
    return str(obj)


class Normalizer:
    def __init__(self, schemas: SchemaSet, cache_entries: int | None = None) -> None:
        """``cache_entries``: masked field values kept (`CanonicalText`; None: its default)."""
        self.text = CanonicalText(schemas, cache_entries)

    def __call__(self, rec: RawRecord) -> NormalizedEvent | NotSysmon:
        """Raises BadRecord for a record that must be dead-lettered."""
        data = rec.data
        ev = parse_and_map(data)
        if ev is None:
            return NOT_SYSMON
        raw_bytes = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        raw_str = data if isinstance(data, str) else data.decode("utf-8", "replace")
        text = self.text.build(ev)
        fields = ev.fields if rec.meta is None else {**ev.fields, SOURCE_META_KEY: rec.meta}
        try:
            fields_json = orjson.dumps(fields, default=_default,
                                       option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise BadRecord(f"fields cannot be stored as JSON: {exc}") from exc
        return NormalizedEvent(
            event_key=ev.key(raw_bytes),
            source=rec.source,
            position=rec.position,
            event_id=ev.event_id,
            computer=ev.computer,
            user_name=ev.user,
            ts=ev.utc_time,
            record_id=ev.record_id,
            channel=ev.channel,
            shape=ev.shape,
            normalized=text,
            text_hash=hashlib.sha256(text.encode()).hexdigest()[:32],
            fields=fields_json,
            raw=raw_str,
        )

