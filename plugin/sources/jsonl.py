"""JSON lines (.json/.jsonl/.ndjson) and files holding one JSON array (Sentinel, Kibana exports).

Lines are split from raw chunks so a member of an archive streams without extraction and is
hashed as it is read. Parsing happens in normalization: here a line is just bytes.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterator

import orjson

from plugin.sources.base import Item, RawRecord, SourceError

CHUNK = 1 << 20
MAX_WHOLE_FILE = 512 * 1024 * 1024  # a JSON array or pretty-printed object is loaded whole
#: the longest JSON line kept: an event is kilobytes (an EVTX record fits a 64 KiB chunk), so a
#: longer line is damage or hostile; it becomes a dead letter without being held whole in memory
MAX_LINE = 16 * 1024 * 1024


class HashingReader:
    """Wraps a binary stream; counts and hashes what is read (chain of custody for members)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def read_json(name: str, stream: BinaryIO) -> Iterator[Item]:
    """Yield one RawRecord per JSON line, or per element when the file is one JSON array."""
    first = stream.read(CHUNK)
    head = first.lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"["):
        yield from _read_array(name, first, stream)
        return
    yield from _read_lines(name, first, stream)


def _read_array(name: str, first: bytes, stream: BinaryIO) -> Iterator[Item]:
    parts = [first]
    size = len(first)
    while chunk := stream.read(CHUNK):
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_WHOLE_FILE:
            yield SourceError(name, None, f"JSON array file larger than {MAX_WHOLE_FILE} bytes; "
                              "convert it to JSON lines")
            return
    blob = b"".join(parts)
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        yield SourceError(name, None, f"invalid JSON array file: {exc}", blob[:4096])
        return
    if isinstance(doc, dict):  # Kibana/Elastic search response: hits.hits[]._source
        hits = doc.get("hits", {}).get("hits") if isinstance(doc.get("hits"), dict) else None
        doc = [h.get("_source", h) if isinstance(h, dict) else h for h in hits] if hits else [doc]
    for i, item in enumerate(doc):
        yield RawRecord(name, i, orjson.dumps(item))


def _read_lines(name: str, first: bytes, stream: BinaryIO,
                max_line: int = MAX_LINE) -> Iterator[Item]:
    position = 0
    rest = b""
    skipping = False  # inside a line over ``max_line``: its bytes are dropped up to its newline
    chunk = first
    while chunk:
        if skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                chunk = stream.read(CHUNK)
                continue
            skipping = False
            position += 1
            chunk = chunk[cut + 1:]
        buf = rest + chunk
        lines = buf.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if len(line) > max_line:
                yield _too_long(name, position, line, max_line)
            elif line.strip():
                yield RawRecord(name, position, line.rstrip(b"\r"))
            position += 1
        if len(rest) > max_line:
            yield _too_long(name, position, rest, max_line)
            rest, skipping = b"", True
        chunk = stream.read(CHUNK)
    if rest.strip():
        yield RawRecord(name, position, rest.rstrip(b"\r"))


def _too_long(name: str, position: int, head: bytes, max_line: int) -> SourceError:
    return SourceError(name, position, f"JSON line longer than {max_line:,} bytes (not read)",
                       head[:4096])
