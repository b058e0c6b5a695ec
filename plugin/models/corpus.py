"""Canonical texts from any supported input: the training corpus for `train`.

Uses the same sources and normalizer as `import`, so a model is trained on exactly the text it
will later embed. Bad records are skipped here (and counted), since training stores nothing.
It lives beside the trainers: it reads inputs and normalizes them, and needs nothing of the
pipeline that stores, scores and reports events.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterator, Sequence

import structlog

from plugin.normalize.normalizer import NOT_SYSMON, Normalizer
from plugin.normalize.schema import SchemaSet
from plugin.normalize.shapes import BadRecord
from plugin.sources.base import RawRecord, SourceError
from plugin.sources.files import FileInput, discover

log = structlog.get_logger(__name__)


@dataclass
class CorpusStats:
    inputs: int = 0
    excluded_inputs: int = 0
    events: int = 0
    bad_records: int = 0


def iter_texts(paths: Sequence[str], schemas: SchemaSet, exclude: Sequence[str] = (),
               stats: CorpusStats | None = None) -> Iterator[str]:
    """Yield the canonical text of every Sysmon event in `paths`, skipping inputs whose path
    (or `ARCHIVE!member` name) matches one of the `exclude` glob patterns."""
    st = stats if stats is not None else CorpusStats()
    norm = Normalizer(schemas)

    def excluded(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pat) for pat in exclude)

    for unit in discover(list(paths)):
        if isinstance(unit, SourceError):
            continue
        if excluded(unit.name):
            st.excluded_inputs += 1
            log.info("corpus_input_excluded", path=unit.name)
            continue
        inputs = [unit] if isinstance(unit, FileInput) else (
            m for m in unit.members() if not isinstance(m, SourceError) and not excluded(m.name))
        for inp in inputs:
            st.inputs += 1
            for item in inp.records():
                if not isinstance(item, RawRecord):
                    continue
                try:
                    out = norm(item)
                except BadRecord:
                    st.bad_records += 1
                    continue
                if out is NOT_SYSMON:
                    continue
                st.events += 1
                yield out.normalized



