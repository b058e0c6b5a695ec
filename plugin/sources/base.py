"""What every source yields: records with their position, or errors to dead-letter.

A source never raises for bad content: a damaged chunk, a bad line, a truncated archive become
SourceError items in the stream, and reading goes on with whatever can still be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Union

MAX_PAYLOAD = 64 * 1024  # dead-letter payloads are cut here


@dataclass(slots=True)
class RawRecord:
    source: str  # path as given, PATH!member, or kafka:topic/partition
    position: int  # record index in the file, or Kafka offset
    data: bytes | str  # one serialized record: a JSON line, EVTX JSON, or event XML
    meta: dict | None = None  # where it came from beyond source/position (Kafka key, headers)


@dataclass(slots=True)
class SourceError:
    source: str
    position: int | None
    reason: str
    payload: bytes | str | None = None


Item = Union[RawRecord, SourceError]


class Input(Protocol):
    """One unit of chain of custody: a file, or one member of an archive."""

    name: str  # as reported in events.source and imports.path

    def records(self) -> Iterator[Item]: ...


def truncate_payload(payload: bytes | str | None) -> str | None:
    if payload is None:
        return None
    if isinstance(payload, bytes):
        payload = payload[: MAX_PAYLOAD + 1].decode("utf-8", "replace")
    if len(payload) > MAX_PAYLOAD:
        return payload[:MAX_PAYLOAD] + f"...<truncated, {len(payload)}+ chars>"
    return payload
