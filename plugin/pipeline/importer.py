"""Forensic batch import: file custody around the flow.

Each file or archive member is one unit of custody. Its records go through the flow
(`plugin.pipeline.flow`: normalize, batch, stages, sink); its `imports` row is written only after
the flow reports all of its events durable, so a rerun skips inputs whose SHA-256 already
completed and re-imports the rest; idempotent writes keyed by `event_key` make that replay
duplicate nothing.

Integrity findings ride along: every record passes an `IntegrityTracker` on its way through the
normalizer (`TrackingNormalizer`), and an input's `integrity` rows are written with its custody,
once its events are durable and before its `imports` row says complete (so a resumed import
writes them again, replacing, never adding).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Sequence

import structlog

from plugin import __version__
from plugin.detect.integrity import IntegrityTracker, is_alarming
from plugin.normalize.event import iso_ms
from plugin.normalize.normalizer import NOT_SYSMON, NormalizedEvent, Normalizer, NotSysmon
from plugin.normalize.schema import SchemaSet
from plugin.normalize.shapes import BadRecord
from plugin.pipeline.batch import BatchStage
from plugin.pipeline.flow import Counts, Flow
from plugin.pipeline.progress import Progress
from plugin.sources.base import RawRecord, SourceError
from plugin.sources.files import ArchiveInput, FileInput, MemberInput, discover
from plugin.store import DeadLetter, Store, utcnow

log = structlog.get_logger(__name__)


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
    #: the second walk of a cold start over the whole case (`plugin.pipeline.settle`): events
    #: and seconds (included in ``seconds``); None when the run needed none
    settled: dict | None = None
    #: inputs (files, archive members) that held no Sysmon event: the wrong log, or a damaged one
    inputs_without_sysmon: list[str] = field(default_factory=list)
    #: the first records that became dead letters: source, position, line (1-based, JSON lines)
    #: or record (1-based, EVTX), reason
    first_dead_letters: list[dict] = field(default_factory=list)
    #: integrity findings per input, computer and channel (`integrity` rows, times as ISO-8601),
    #: those of inputs skipped as already imported included (as stored then)
    integrity: list[dict] = field(default_factory=list)


class TrackingNormalizer(Normalizer):
    """The normalizer, showing every record it sees to the integrity tracker on the way: the
    flow stays as it is, and Sysmon records are read once (the tracker takes the event built
    here); other records are read by the tracker, envelope only."""

    def __init__(self, schemas: SchemaSet, tracker: IntegrityTracker) -> None:
        super().__init__(schemas)
        self.tracker = tracker

    def __call__(self, rec: RawRecord) -> NormalizedEvent | NotSysmon:
        try:
            out = super().__call__(rec)
        except BadRecord:
            self.tracker.observe_raw(rec)  # a dead letter still held a place in its log
            raise
        if out is NOT_SYSMON:
            self.tracker.observe_raw(rec)
        else:
            self.tracker.observe_event(out)
        return out


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
        self.integrity = IntegrityTracker()
        self.normalizer = TrackingNormalizer(schemas, self.integrity)
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
        self._current = ""
        flow = Flow(self.store, self.normalizer, self.stages, batch_size=self.batch_size,
                    since=self.since, until=self.until,
                    progress=lambda n: progress.advance(0, n, self._current))
        try:
            for unit in units:
                if isinstance(unit, SourceError):
                    summary.add(self._dead_letter(flow, unit))
                    continue
                summary.files += 1
                self._run_unit(flow, unit, summary, progress)
        finally:
            flow.close()
            progress.close()
        summary.first_dead_letters = [_where(d) for d in flow.first_dead]
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.stages = [s.stats() if hasattr(s, "stats") else {"name": getattr(s, "name", "?")}
                          for s in self.stages]
        summary.embedded = any(getattr(s, "name", "").startswith("embed:") for s in self.stages)
        scored = [s for s in self.stages if getattr(s, "name", "").startswith("score:")]
        summary.outliers = sum(s.outliers for s in scored if getattr(s, "alerts", True))
        skipped_all = summary.files > 0 and summary.inputs_skipped_same_sha256 == summary.files
        summary.note = (
            "nothing new: every input was imported before (same SHA-256), so nothing was "
            "embedded or scored now; `sysmon-blt rescore` embeds and scores stored events"
            if skipped_all else
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

    def _run_unit(self, flow: Flow, unit: FileInput | ArchiveInput, summary: ImportSummary,
                  progress: Progress) -> None:
        started = utcnow()
        sha = unit.sha256()
        done = self.store.completed_import(sha)
        if done is not None:
            log.info("input_already_imported", path=unit.name, sha256=sha, first_path=done["path"])
            summary.inputs_skipped_same_sha256 += 1
            skipped = Counts(records=done["records"], sysmon_events=done["sysmon_events"],
                             duplicates=done["sysmon_events"])
            summary.add(skipped)
            self._record(unit.name, sha, unit.size, skipped, started, "skipped_same_sha256")
            # as found then (the same path collected again with other bytes is another input)
            summary.integrity.extend(
                _jsonable(r) for r in self.store.integrity_findings(done["path"])
                if r["import_path"] != done["path"] or r["sha256"] == sha)
            progress.advance(unit.size, 0, unit.name)
            return
        if isinstance(unit, FileInput):
            counts = self._consume(flow, unit, summary)
            self._keep_integrity(unit.name, sha, summary)
        else:
            counts = Counts()
            for member in unit.members():
                if isinstance(member, SourceError):
                    counts.add(self._dead_letter(flow, member))
                    continue
                m_started = utcnow()
                mc = self._consume(flow, member, summary)
                m_sha = member.sha256()
                self._keep_integrity(member.name, m_sha, summary)
                self._record(member.name, m_sha, member.size, mc, m_started, "complete")
                counts.add(mc)
        summary.add(counts)
        self._record(unit.name, sha, unit.size, counts, started, "complete")
        progress.advance(unit.size, 0, unit.name)
        log.info("input_imported", path=unit.name, **asdict(counts))

    def _consume(self, flow: Flow, inp: FileInput | MemberInput, summary: ImportSummary) -> Counts:
        """Read one input to the end; returns once all of its events are durable."""
        self._current = inp.name
        for item in inp.records():
            flow.feed(item)
        flow.flush()
        counts = flow.drain()
        if counts.sysmon_events == 0:
            summary.inputs_without_sysmon.append(inp.name)
        return counts

    @staticmethod
    def _dead_letter(flow: Flow, err: SourceError) -> Counts:
        """An input that cannot be read at all: one dead letter, written now."""
        flow.feed(err)
        flow.flush()
        return flow.drain()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _keep_integrity(self, path: str, sha: str | None, summary: ImportSummary) -> None:
        """An input's integrity rows, written once its events are durable (`_consume` drained
        the flow) and before its `imports` row: the store replaces rows of the same path and
        SHA-256, so a rerun after a crash between the two leaves one set."""
        found = self.integrity.take(path)
        self.store.record_integrity(path, sha, [asdict(f) for f in found])
        summary.integrity.extend(_jsonable({**asdict(f), "sha256": sha}) for f in found)
        for f in found:
            if f.alarming:
                log.warning("integrity_alarm", path=path, computer=f.computer, channel=f.channel,
                            gaps=f.gaps, missing_records=f.missing_records,
                            log_clears=f.log_clear_count)

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


def _jsonable(row: dict) -> dict:
    """A finding for the summary, flagged when alarming, times as ISO-8601 UTC (milliseconds)."""
    out = {k: (iso_ms(v.astimezone(timezone.utc)) if isinstance(v, datetime) else v)
           for k, v in row.items()}
    out["alarming"] = is_alarming(row["gaps"], row["log_clear_count"], row["sysmon_changes"])
    return out


def _where(d: DeadLetter) -> dict:
    """A dead letter as a user reads its place: line numbers in JSON files, record numbers in
    EVTX, both counted from 1 (the stored position counts from 0)."""
    out: dict = {"source": d.source, "position": d.position, "reason": d.reason}
    if d.position is not None:
        unit = "record" if d.source.lower().split("!")[-1].endswith(".evtx") else "line"
        out[unit] = d.position + 1
    return out
