"""Forensic batch import: inputs -> normalize -> batch -> sinks -> commit (an `imports` row).

Each file or archive member is one unit of custody. Its `imports` row is written only after all
of its events are in the database, so a rerun skips inputs whose SHA-256 already completed and
re-imports the rest; idempotent writes keyed by `event_key` make that replay duplicate nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Callable, Sequence

import numpy as np  # noqa: F401 (annotation)
import structlog

from plugin import __version__
from plugin.normalize.normalizer import NOT_SYSMON, NormalizedEvent, Normalizer
from plugin.normalize.schema import SchemaSet
from plugin.normalize.shapes import BadRecord
from plugin.pipeline.progress import Progress
from plugin.pipeline.writer import BackgroundWriter
from plugin.sources.base import RawRecord, SourceError, truncate_payload
from plugin.sources.files import ArchiveInput, FileInput, MemberInput, discover
from plugin.store.duckdb import EVENT_COLUMNS, DeadLetter, Store, VectorRows, utcnow

log = structlog.get_logger(__name__)

@dataclass
class Batch:
    """What flows from normalize to the sinks: events, dead letters, and what stages add."""

    events: list[NormalizedEvent]
    dead: list[DeadLetter]
    vectors: list[VectorRows] = field(default_factory=list)  # new vectors, to store
    text_vectors: dict[str, dict[str, "np.ndarray"]] = field(default_factory=dict)  # model -> hash -> vector
    assignments: list[dict] = field(default_factory=list)  # scores, one row per event and model
    alerts: list[dict] = field(default_factory=list)  # outliers of the primary model


# A stage sees each batch after normalization and before the sinks (embedding and scoring plug
# in here); it may add to the batch but must not drop events.
BatchStage = Callable[[Batch], None]


@dataclass
class Counts:
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


@dataclass
class ImportSummary(Counts):
    outliers: int = 0
    files: int = 0
    inputs_skipped_same_sha256: int = 0
    seconds: float = 0.0
    events_per_second: float = 0.0
    db: str = ""
    embedded: bool = False
    note: str = ""
    stages: list[dict] = field(default_factory=list)


def _rows(events: Sequence[NormalizedEvent], imported_at: datetime) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    for e in events:
        for c in EVENT_COLUMNS[:-1]:
            cols[c].append(getattr(e, c))
    cols["imported_at"] = [imported_at] * len(events)
    return cols


class Importer:
    def __init__(
        self,
        store: Store,
        schemas: SchemaSet,
        *,
        batch_size: int = 5000,
        since: datetime | None = None,
        until: datetime | None = None,
        config_hash: str = "",
        model_version: str | None = None,
        stages: Sequence[BatchStage] = (),
        progress: bool = True,
        evtx_threads: int = 0,
        command: str = "import",
    ) -> None:
        self.store = store
        self.normalize = Normalizer(schemas)
        self.batch_size = batch_size
        self.since = since
        self.until = until
        self.config_hash = config_hash
        self.model_version = model_version
        self.stages = list(stages)
        self.show_progress = progress
        self.evtx_threads = evtx_threads
        self.command = command

    # -- top level ---------------------------------------------------------------------------
    def run(self, paths: Sequence[str]) -> ImportSummary:
        t0 = time.perf_counter()
        started = utcnow()
        summary = ImportSummary(db=self.store.path)
        units = list(discover(list(paths), self.evtx_threads))
        total = sum(u.size for u in units if not isinstance(u, SourceError))
        progress = Progress(total, enabled=self.show_progress)
        self.writer = BackgroundWriter()
        try:
            for unit in units:
                if isinstance(unit, SourceError):
                    counts = Counts(dead_letters=1)
                    self.store.write_batch({}, [self._dead(unit)])
                    summary.add(counts)
                    continue
                summary.files += 1
                self._run_unit(unit, summary, progress)
        finally:
            self.writer.close()
            progress.close()
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.stages = [s.stats() if hasattr(s, "stats") else {"name": getattr(s, "name", "?")}
                          for s in self.stages]
        summary.embedded = any(getattr(s, "name", "").startswith("embed:") for s in self.stages)
        scored = [s for s in self.stages if getattr(s, "name", "").startswith("score:")]
        summary.outliers = sum(s.outliers for s in scored if getattr(s, "alerts", True))
        summary.note = (
            "events stored, embedded and scored" if scored else
            "events stored with embeddings; no scorer (the model has no reference clusters and "
            "the database no fit)" if summary.embedded else
            "events stored only (no model loaded): no embeddings or scores")
        summary.events_per_second = round(summary.sysmon_events / summary.seconds, 1) if summary.seconds else 0.0
        embeds = [st for st in summary.stages if st.get("name", "").startswith("embed:")]
        if embeds:
            self.store.record_model_runs(self.command, started, summary.seconds,
                                         summary.sysmon_events, embeds)
        return summary

    def _run_unit(self, unit: FileInput | ArchiveInput, summary: ImportSummary, progress: Progress) -> None:
        started = utcnow()
        sha = unit.sha256()
        done = self.store.completed_import(sha)
        if done is not None:
            log.info("input_already_imported", path=unit.name, sha256=sha, first_path=done["path"])
            summary.inputs_skipped_same_sha256 += 1
            summary.records += done["records"]
            summary.sysmon_events += done["sysmon_events"]
            summary.duplicates += done["sysmon_events"]
            self._record(unit.name, sha, unit.size, Counts(records=done["records"],
                         sysmon_events=done["sysmon_events"], duplicates=done["sysmon_events"]),
                         started, "skipped_same_sha256")
            progress.advance(unit.size, 0, unit.name)
            return
        if isinstance(unit, FileInput):
            counts = self._consume(unit, progress)
            summary.add(counts)
        else:
            counts = Counts()
            for member in unit.members():
                if isinstance(member, SourceError):
                    self.writer.drain()
                    self.store.write_batch({}, [self._dead(member)])
                    counts.dead_letters += 1
                    continue
                m_started = utcnow()
                mc = self._consume(member, progress)
                self._record(member.name, member.sha256(), member.size, mc, m_started, "complete")
                counts.add(mc)
            summary.add(counts)
        self._record(unit.name, sha, unit.size, counts, started, "complete")
        progress.advance(unit.size, 0, unit.name)
        log.info("input_imported", path=unit.name, **asdict(counts))

    # -- one input ---------------------------------------------------------------------------
    def _consume(self, inp: FileInput | MemberInput, progress: Progress) -> Counts:
        """Read one input to the end; returns once all of its events are written."""
        c = Counts()
        writes: list = []
        batch: dict[str, NormalizedEvent] = {}
        dead: list[DeadLetter] = []
        for item in inp.records():
            if isinstance(item, SourceError):
                dead.append(self._dead(item))
                c.dead_letters += 1
                continue
            c.records += 1
            out = self._normalize(item, dead, c)
            if out is None:
                continue
            if out is NOT_SYSMON:
                c.skipped_non_sysmon += 1
                continue
            c.sysmon_events += 1
            if out.ts is not None and (
                (self.since is not None and out.ts < self.since)
                or (self.until is not None and out.ts >= self.until)
            ):
                c.filtered_by_time += 1
                continue
            if out.event_key in batch:
                c.duplicates += 1
                continue
            batch[out.event_key] = out
            if len(batch) >= self.batch_size:
                writes.append(self._flush(batch, dead, progress, inp.name))
                batch, dead = {}, []
        writes.append(self._flush(batch, dead, progress, inp.name))
        self.writer.drain()
        for fut, n in filter(None, writes):
            new = fut.result()
            c.new_events += new
            c.duplicates += n - new
        return c

    def _normalize(self, item: RawRecord, dead: list[DeadLetter], c: Counts):
        try:
            return self.normalize(item)
        except BadRecord as exc:
            reason = str(exc)
        except Exception as exc:  # a bug must cost one record, never the import
            log.exception("normalize_internal_error", source=item.source, position=item.position)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        dead.append(DeadLetter(item.source, item.position, reason, truncate_payload(item.data)))
        c.dead_letters += 1
        return None

    def _flush(self, batch: dict[str, NormalizedEvent], dead: list[DeadLetter],
               progress: Progress, name: str):
        """Run the batch stages, hand the batch to the writer; (future of new count, size)."""
        if not batch and not dead:
            return None
        b = Batch(list(batch.values()), dead)
        for stage in self.stages:
            stage(b)
        fut = self.writer.submit(self.store.write_batch,
                                 _rows(b.events, utcnow()) if b.events else {}, b.dead, b.vectors,
                                 b.assignments, b.alerts)
        progress.advance(0, len(b.events), name)
        return fut, len(b.events)

    # -- bookkeeping ---------------------------------------------------------------------------
    @staticmethod
    def _dead(err: SourceError) -> DeadLetter:
        return DeadLetter(err.source, err.position, err.reason, truncate_payload(err.payload))

    def _record(self, path: str, sha: str | None, size: int, c: Counts, started: datetime,
                status: str) -> None:
        self.store.record_import({
            "path": path, "sha256": sha, "bytes": size, "records": c.records,
            "sysmon_events": c.sysmon_events, "new_events": c.new_events,
            "duplicates": c.duplicates, "skipped_non_sysmon": c.skipped_non_sysmon,
            "dead_letters": c.dead_letters, "started": started, "finished": utcnow(),
            "status": status, "tool_version": __version__, "model_version": self.model_version,
            "config_hash": self.config_hash,
        })


def summary_dict(s: ImportSummary) -> dict:
    return asdict(s)


