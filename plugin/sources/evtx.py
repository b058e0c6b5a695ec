"""EVTX files through pyevtx-rs's multithreaded parser.

pyevtx-rs raises from its iterator for a damaged chunk and then carries on with the next chunk:
each such error becomes one SourceError naming the chunk, and reading continues.
"""

from __future__ import annotations

import re
from typing import BinaryIO, Iterator

import evtx

from plugin.sources.base import Item, RawRecord, SourceError

EVTX_MAGIC = b"ElfFile\x00"
_CHUNK_RE = re.compile(r"chunk number (\d+)")
_MAX_CONSECUTIVE_ERRORS = 100_000  # a parser stuck raising must not spin forever


def read_evtx(name: str, path_or_stream: str | BinaryIO, threads: int = 0) -> Iterator[Item]:
    try:
        parser = evtx.PyEvtxParser(path_or_stream, number_of_threads=threads)
        it = parser.records_json()
    except (OSError, RuntimeError, ValueError) as exc:
        yield SourceError(name, None, f"not a readable EVTX file: {exc}")
        return
    position = 0
    errors_in_a_row = 0
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return
        except (RuntimeError, OSError, ValueError) as exc:
            errors_in_a_row += 1
            msg = str(exc)
            m = _CHUNK_RE.search(msg)
            where = f"damaged EVTX chunk {m.group(1)}" if m else "unreadable EVTX record"
            yield SourceError(name, position, f"{where}: {msg[:500]}")
            if errors_in_a_row >= _MAX_CONSECUTIVE_ERRORS:
                yield SourceError(name, position, "gave up: too many consecutive EVTX errors")
                return
            continue
        errors_in_a_row = 0
        yield RawRecord(name, position, rec["data"])
        position += 1
