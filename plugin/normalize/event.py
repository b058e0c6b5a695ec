"""The normalized event every shape maps to, and its identity (`event_key`).

`event_key` follows the design contract exactly: the first 32 hex digits of SHA-256 over
`lower(computer)|channel|record_id|utc_time` (utc_time as ISO-8601 with milliseconds), else over
the raw record's bytes when any part is missing. Record IDs alone collide across captures, so the
event's own creation time is part of the key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

_TIME_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*(Z|UTC|[+-]00:?00)?\s*$",
    re.IGNORECASE,
)


def parse_utc(value: object) -> datetime | None:
    """Parse a UTC time as Sysmon and Windows write it; None when it is not one.

    Accepts `2017-12-26 13:10:29.134`, `2017-12-26T13:10:29.136879Z` and Sentinel's
    7-digit fractions. Fractions are truncated to microseconds, never rounded, so the same
    instant written two ways gives one key.
    """
    if not isinstance(value, str):
        return None
    m = _TIME_RE.match(value)
    if not m:
        return None
    frac = (m.group(7) or "")[:6].ljust(6, "0")
    try:
        return datetime(
            int(m.group(1)), int(m.group(2)), int(m.group(3)),
            int(m.group(4)), int(m.group(5)), int(m.group(6)), int(frac), tzinfo=timezone.utc,
        )
    except ValueError:
        return None


def iso_ms(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def event_key(
    computer: str | None, channel: str | None, record_id: int | None,
    utc_time: datetime | None, raw: bytes,
) -> str:
    if computer and channel and record_id is not None and utc_time is not None:
        basis = f"{computer.lower()}|{channel}|{record_id}|{iso_ms(utc_time)}".encode()
    else:
        basis = raw
    return hashlib.sha256(basis).hexdigest()[:32]


@dataclass(slots=True)
class SysmonEvent:
    """One Sysmon event, whatever shape it arrived in.

    `fields` holds every EventData field as parsed (RuleName and side fields such as a
    simulator's label included); only the schema's text fields reach the canonical text.
    """

    event_id: int
    computer: str | None
    channel: str | None
    record_id: int | None
    utc_time: datetime | None
    user: str | None
    fields: dict[str, Any]
    shape: str
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self, raw: bytes) -> str:
        return event_key(self.computer, self.channel, self.record_id, self.utc_time, raw)
