"""Integrity findings of a forensic import: what an examiner asks of a log before trusting its
events (the questions Chainsaw's and Hayabusa's timelines answer first).

Per input (a file, or an archive member: the unit of custody), computer and channel: the first
and last event time, how many records, the holes in EventRecordID, whether the log was cleared
(Security 1102, System 104) and what Sysmon said about itself (4 service state changed,
16 configuration changed, 255 error). An attacker who clears a log or drops records leaves
exactly these traces, and a model scoring the surviving events never sees them.

Pure logic, no SQL: the importer shows every record to an `IntegrityTracker` as it passes the
normalizer. Sysmon records arrive as the normalizer's `NormalizedEvent`, so they are never parsed
twice; other providers' records (never stored as events) are read here once, envelope only, with
their details parsed only for the rare log clearing. That second parse costs about 2 us a record
against pyevtx-rs's 12 us to produce it (measured on a Security log), so it stays off the hot path.

Record ids are kept as sorted runs of consecutive ids, not one by one: an intact 1M-record log is
one run, and memory grows with the holes, not the records. Records may arrive in any order
(JSON exports are rarely sorted by record id); holes are those between the smallest and the
largest id seen.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import orjson
import structlog

from plugin.normalize.event import iso_ms, parse_utc
from plugin.normalize.normalizer import NormalizedEvent
from plugin.sources.base import RawRecord

log = structlog.get_logger(__name__)

#: lists kept per computer and channel are cut here; the counts beside them stay exact
MAX_LISTED = 100
#: (channel, event id) of a log being cleared, by the Eventlog service itself
LOG_CLEARS = {("security", 1102): "Security log cleared", ("system", 104): "event log cleared"}
EVENTLOG_PROVIDERS = ("microsoft-windows-eventlog", "eventlog")
#: Sysmon's records about itself, and the fields that say what changed
SYSMON_CHANGES: dict[int, tuple[str, tuple[str, ...]]] = {
    4: ("service state changed", ("State", "Version", "SchemaVersion")),
    16: ("configuration changed", ("Configuration", "ConfigurationFileHash")),
    255: ("error", ("ID", "Description")),
}
_WHO_FIELDS = ("SubjectUserName", "SubjectDomainName", "SubjectUserSid")


# ---------------------------------------------------------------------------------- record ids


class RecordIds:
    """The EventRecordIDs of one log as sorted runs ``[starts[i], ends[i]]``: appending the next
    id extends the last run in O(1), the usual case for an EVTX file."""

    __slots__ = ("starts", "ends", "duplicates")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.duplicates = 0

    def add(self, rid: int) -> None:
        starts, ends = self.starts, self.ends
        if ends and rid == ends[-1] + 1:
            ends[-1] = rid
            return
        i = bisect_right(starts, rid) - 1  # the run starting at or before rid
        if i >= 0 and rid <= ends[i]:
            self.duplicates += 1
            return
        joins_left = i >= 0 and ends[i] == rid - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == rid + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = rid
        elif joins_right:
            starts[i + 1] = rid
        else:
            starts.insert(i + 1, rid)
            ends.insert(i + 1, rid)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def first(self) -> int | None:
        return self.starts[0] if self.starts else None

    @property
    def last(self) -> int | None:
        return self.ends[-1] if self.ends else None

    def gaps(self, limit: int = MAX_LISTED) -> list[list[int]]:
        """The first ``limit`` holes as ``[after, before]``: the ids present on either side, so
        ``after + 1 .. before - 1`` are missing."""
        return [[self.ends[i], self.starts[i + 1]] for i in range(min(limit, len(self.starts) - 1))]

    def gap_count(self) -> int:
        return max(0, len(self.starts) - 1)

    def missing(self) -> int:
        return sum(self.starts[i + 1] - self.ends[i] - 1 for i in range(len(self.starts) - 1))


# ---------------------------------------------------------------------------------- findings


@dataclass
class Finding:
    """One input's findings for one computer and channel: an `integrity` row."""

    import_path: str
    computer: str | None
    channel: str | None
    first_ts: datetime | None
    last_ts: datetime | None
    records: int
    record_id_gaps: list[list[int]]
    gaps: int
    missing_records: int
    first_record_id: int | None
    last_record_id: int | None
    duplicate_record_ids: int
    records_without_id: int
    log_clears: list[dict]
    log_clear_count: int
    sysmon_changes: list[dict]
    sysmon_change_count: int

    @property
    def alarming(self) -> bool:
        return is_alarming(self.gaps, self.log_clear_count, self.sysmon_changes)


def is_alarming(gaps: int, log_clears: int, sysmon_changes: list[dict]) -> bool:
    """What an examiner must look at before trusting the timeline: a cleared log, missing records,
    or Sysmon stopped (the three ways events vanish without a trace in the events themselves)."""
    stopped = any(c.get("event_id") == 4 and str(c.get("State", "")).lower() == "stopped"
                  for c in sysmon_changes)
    return bool(gaps or log_clears or stopped)


@dataclass
class _Log:
    """Running state of one computer and channel of one input."""

    computer: str | None
    channel: str | None
    records: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    ids: RecordIds = field(default_factory=RecordIds)
    without_id: int = 0
    log_clears: list[dict] = field(default_factory=list)
    log_clear_count: int = 0
    sysmon_changes: list[dict] = field(default_factory=list)
    sysmon_change_count: int = 0

    def saw(self, record_id: int | None, ts: datetime | None) -> None:
        self.records += 1
        if record_id is None:
            self.without_id += 1
        else:
            self.ids.add(record_id)
        if ts is not None:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts

    def finding(self, import_path: str) -> Finding:
        return Finding(
            import_path=import_path, computer=self.computer, channel=self.channel,
            first_ts=self.first_ts, last_ts=self.last_ts, records=self.records,
            record_id_gaps=self.ids.gaps(), gaps=self.ids.gap_count(),
            missing_records=self.ids.missing(), first_record_id=self.ids.first,
            last_record_id=self.ids.last, duplicate_record_ids=self.ids.duplicates,
            records_without_id=self.without_id,
            log_clears=self.log_clears, log_clear_count=self.log_clear_count,
            sysmon_changes=self.sysmon_changes, sysmon_change_count=self.sysmon_change_count)


class IntegrityTracker:
    """Collects findings per input while its records pass; `take` hands one input's findings
    over once the input is read to the end (and forgets them)."""

    def __init__(self) -> None:
        self._logs: dict[str, dict[tuple[str, str], _Log]] = {}

    def _log_of(self, source: str, computer: str | None, channel: str | None) -> _Log:
        """Windows names channels and hosts case-insensitively, and one export may spell them
        both ways (NXLog wrote `security` and `Security` for one host's one log): one log, kept
        under the spelling seen first."""
        logs = self._logs.setdefault(source, {})
        key = ((computer or "").lower(), (channel or "").lower())
        state = logs.get(key)
        if state is None:
            state = logs[key] = _Log(computer, channel)
        return state

    def observe_event(self, ev: NormalizedEvent) -> None:
        """A Sysmon record, as the normalizer produced it (no second parse)."""
        state = self._log_of(ev.source, ev.computer, ev.channel)
        state.saw(ev.record_id, ev.ts)
        change = SYSMON_CHANGES.get(ev.event_id)
        if change is None:
            return
        state.sysmon_change_count += 1
        if len(state.sysmon_changes) >= MAX_LISTED:
            return
        what, keys = change
        try:
            fields = orjson.loads(ev.fields)
        except orjson.JSONDecodeError:
            fields = {}
        entry: dict[str, Any] = {"ts": _iso(ev.ts), "event_id": ev.event_id, "what": what,
                                 "record_id": ev.record_id}
        entry.update({k: _text(fields.get(k)) for k in keys if fields.get(k) is not None})
        state.sysmon_changes.append(entry)

    def observe_raw(self, rec: RawRecord) -> None:
        """A record the normalizer did not turn into an event: another provider's (Security,
        System, ...), or one it could not read. Never raises: a record the envelope reader cannot
        make sense of is simply not counted here (the flow dead-letters it)."""
        try:
            env = read_envelope(rec.data)
        except Exception:  # best effort by design: integrity must never cost a record
            log.debug("integrity_envelope_unreadable", source=rec.source, position=rec.position)
            return
        if env is None:
            return
        state = self._log_of(rec.source, env.computer, env.channel)
        state.saw(env.record_id, env.ts)
        if env.event_id is None or env.channel is None:
            return
        clear = LOG_CLEARS.get((env.channel.lower(), env.event_id))
        if clear is None or (env.provider is not None
                             and env.provider.lower() not in EVENTLOG_PROVIDERS):
            return
        state.log_clear_count += 1
        log.info("log_cleared", source=rec.source, computer=env.computer, channel=env.channel,
                    event_id=env.event_id, ts=_iso(env.ts))
        if len(state.log_clears) < MAX_LISTED:
            state.log_clears.append(_clear_entry(env, clear))

    def take(self, source: str) -> list[Finding]:
        """The findings of one input, ordered by computer and channel; forgets them."""
        logs = self._logs.pop(source, {})
        return [logs[k].finding(source) for k in sorted(logs)]


def _clear_entry(env: "Envelope", what: str) -> dict[str, Any]:
    """Who cleared which log, when: the Eventlog service records the clearing account in
    UserData/LogFileCleared (Subject*), else only the System part's security id is known."""
    detail = env.detail() if env.detail is not None else {}
    user, domain = detail.get("SubjectUserName"), detail.get("SubjectDomainName")
    entry: dict[str, Any] = {
        "ts": _iso(env.ts), "event_id": env.event_id, "what": what, "record_id": env.record_id,
        "user": (f"{domain}\\{user}" if domain and user else user) or None,
        "sid": detail.get("SubjectUserSid") or env.user_sid,
    }
    cleared = detail.get("Channel") if env.event_id == 104 else env.channel
    if cleared:
        entry["log"] = cleared
    if detail.get("BackupPath"):
        entry["backup_path"] = detail["BackupPath"]
    return entry


def _iso(ts: datetime | None) -> str | None:
    return iso_ms(ts) if ts is not None else None


def _text(value: object) -> str | None:
    if isinstance(value, dict) and "#text" in value:
        value = value["#text"]
    return None if value is None else str(value)


# ---------------------------------------------------------------------------------- envelopes


@dataclass(slots=True)
class Envelope:
    """The System part of any record shape: enough to place it in its log. ``detail`` reads the
    event's own fields (flattened) only when asked: log clearing is rare."""

    computer: str | None
    channel: str | None
    provider: str | None
    event_id: int | None
    record_id: int | None
    ts: datetime | None
    user_sid: str | None = None
    detail: Callable[[], dict[str, Any]] | None = None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, dict):  # {"#text": 104, "#attributes": {"Qualifiers": ...}}
        return _int(value.get("#text"))
    return None


def _s(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("#text")
    return value if isinstance(value, str) and value else None


def _attr(value: object, name: str) -> Any:
    """An attribute as pyevtx-rs renders it (``{"#attributes": {name: v}}``) or flattened."""
    if not isinstance(value, dict):
        return None
    attrs = value.get("#attributes", value)
    return attrs.get(name) if isinstance(attrs, dict) else None


def _flatten(*parts: object, depth: int = 3) -> dict[str, Any]:
    """Leaf values of nested EventData/UserData containers by field name (UserData nests them
    one level down, under the event's template name such as LogFileCleared)."""
    out: dict[str, Any] = {}

    def walk(node: object, level: int) -> None:
        if not isinstance(node, dict) or level > depth:
            return
        for k, v in node.items():
            if k == "#attributes":
                continue
            if isinstance(v, dict) and "#text" not in v:
                walk(v, level + 1)
            else:
                out.setdefault(k, _text(v))

    for p in parts:
        walk(p, 0)
    return out


def _lazy(*parts: object) -> Callable[[], dict[str, Any]]:
    return lambda: _flatten(*parts)


def read_envelope(data: bytes | str) -> Envelope | None:
    """Computer, channel, provider, event id, record id and time of a serialized record in any
    shape the normalizer reads; None for something that is no event record.

    Times follow the normalizer's rule: only a time known to be UTC (the System part's
    SystemTime, Winlogbeat's and Sentinel's event times); NXLog and flat JSON write local times,
    which stay out of first/last."""
    text = data.lstrip() if isinstance(data, str) else data.lstrip().decode("utf-8", "replace")
    if text[:1] == "<":
        return _from_xml(text)
    doc = orjson.loads(text)
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("Event"), dict):
        return _from_event(doc["Event"])
    if isinstance(doc.get("winlog"), dict):
        w = doc["winlog"]
        event = doc.get("event") if isinstance(doc.get("event"), dict) else {}
        host = doc.get("host") if isinstance(doc.get("host"), dict) else {}
        user = w.get("user") if isinstance(w.get("user"), dict) else {}
        return Envelope(
            computer=_s(w.get("computer_name")) or _s(host.get("name")),
            channel=_s(w.get("channel")),
            provider=_s(w.get("provider_name") or event.get("provider")),
            event_id=_int(w.get("event_id", event.get("code"))), record_id=_int(w.get("record_id")),
            ts=parse_utc(doc.get("@timestamp")),  # Winlogbeat sets it to the event's own time
            user_sid=_s(user.get("identifier")),
            detail=_lazy(w.get("user_data"), w.get("event_data")))
    if "event_data" in doc or "log_name" in doc:  # Winlogbeat 6
        return Envelope(
            computer=_s(doc.get("computer_name")), channel=_s(doc.get("log_name")),
            provider=_s(doc.get("source_name")), event_id=_int(doc.get("event_id")),
            record_id=_int(doc.get("record_number")), ts=parse_utc(doc.get("@timestamp")),
            detail=_lazy(doc.get("user_data"), doc.get("event_data")))
    if "EventData" in doc:  # Azure Sentinel
        return Envelope(
            computer=_s(doc.get("Computer")), channel=_s(doc.get("Channel")),
            provider=_s(doc.get("Provider") or doc.get("ProviderName") or doc.get("Source")),
            event_id=_int(doc.get("EventID")),
            record_id=_int(doc.get("EventRecordId", doc.get("EventRecordID"))),
            ts=parse_utc(doc.get("TimeGenerated")), detail=lambda: _sentinel_data(doc["EventData"]))
    for key in ("_raw", "xml", "Xml", "raw_xml"):
        if isinstance(doc.get(key), str) and doc[key].lstrip().startswith("<"):
            return _from_xml(doc[key].lstrip())
    if "EventID" in doc or "SourceName" in doc:  # NXLog, OTRF flat: fields beside the envelope
        return Envelope(
            computer=_s(doc.get("Hostname") or doc.get("Computer")), channel=_s(doc.get("Channel")),
            provider=_s(doc.get("SourceName") or doc.get("ProviderName")),
            event_id=_int(doc.get("EventID")), record_id=_int(doc.get("RecordNumber")),
            ts=None, user_sid=_s(doc.get("UserID")), detail=_lazy(doc))
    return None


def _from_event(ev: dict) -> Envelope | None:
    system = ev.get("System")
    if not isinstance(system, dict):
        return None
    return Envelope(
        computer=_s(system.get("Computer")), channel=_s(system.get("Channel")),
        provider=_s(_attr(system.get("Provider"), "Name")), event_id=_int(system.get("EventID")),
        record_id=_int(system.get("EventRecordID")),
        ts=parse_utc(_attr(system.get("TimeCreated"), "SystemTime")),
        user_sid=_s(_attr(system.get("Security"), "UserID")),
        detail=_lazy(ev.get("UserData"), ev.get("EventData")))


def _from_xml(text: str) -> Envelope | None:
    """Rendered event XML: System children by local name; UserData/EventData leaves by their
    Name attribute (EventData) or tag (UserData's template)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    sysd: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    for part in root:
        name = local(part.tag)
        if name == "System":
            for child in part:
                sysd[local(child.tag)] = dict(child.attrib) or (child.text or "").strip()
                if child.attrib and (child.text or "").strip():
                    sysd[local(child.tag)] = (child.text or "").strip()
        elif name in ("EventData", "UserData"):
            for el in part.iter():
                if el is part or len(el):
                    continue
                detail.setdefault(el.attrib.get("Name") or local(el.tag), el.text or "")
    return Envelope(
        computer=_s(sysd.get("Computer")), channel=_s(sysd.get("Channel")),
        provider=_s(_attr(sysd.get("Provider"), "Name")), event_id=_int(sysd.get("EventID")),
        record_id=_int(sysd.get("EventRecordID")),
        ts=parse_utc(_attr(sysd.get("TimeCreated"), "SystemTime")),
        user_sid=_s(_attr(sysd.get("Security"), "UserID")), detail=lambda: detail)


def _sentinel_data(data: object) -> dict[str, Any]:
    if isinstance(data, dict):
        return _flatten(data)
    if isinstance(data, str) and data.lstrip().startswith("{"):
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return {}
        return _flatten(parsed)
    if isinstance(data, str) and data.lstrip().startswith("<"):
        env = _from_xml("<Event><EventData>" + data + "</EventData></Event>")
        return env.detail() if env is not None and env.detail is not None else {}
    return {}
