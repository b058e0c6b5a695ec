"""Incidents: outliers grouped by host, process tree and time, so an analyst reads a handful of
stories instead of hundreds of alerts.

An attack is rarely one odd event: a dropped binary starts, spawns a shell, loads modules, opens
lsass, talks to the network. Alerts are per canonical text, so one intrusion raises dozens; an
incident is that intrusion as one row. Pure logic (no SQL, no pipeline): the pipeline's incident
stage feeds it scored events batch by batch, `eval` feeds it a whole capture.

Rules, per event in log order (Sysmon logs a parent's creation before its children's events):

* **Process.** An event belongs to one process: a creation (event 1) to the process it creates
  (linked to its parent by ParentProcessGuid), any other event to its ProcessGuid (else
  SourceProcessGuid: the actor of a ProcessAccess or CreateRemoteThread). GUIDs go through
  `plugin.detect.lineage.guid`, so the all-zero GUID joins nothing; an event without a process
  is in no incident. Processes are keyed by host (``computer``, case-insensitive) and GUID.
* **Root.** A process is *flagged* (is itself an outlier) when its creation is an outlier or runs
  an image the baseline never saw (`ContextModel.images`; without a context model, cold start,
  outlier status only). An outlier event's incident is rooted at the earliest (topmost) flagged
  ancestor of its process, itself included, and holds that root's whole process tree. Not the
  topmost ancestor: services.exe or explorer.exe would make one incident per host.
* **Acted upon.** An event that acts on another process (ProcessAccess, CreateRemoteThread: its
  TargetProcessGuid) and whose own process is in no live incident and has no flagged ancestor
  joins the live incident holding its target: csrss, svchost or lsass opening a dropped payload
  is part of the payload's story (the attack labels count it so too), not an incident of
  csrss's own. Before the target's tree has an incident, such an event waits in the target's
  buffer.
* **No flagged ancestor.** An outlier in a process whose creation, and every ancestor's, looked
  ordinary (explorer.exe loading an odd module) roots an incident at its own process that holds
  that process's events only: its descendants were not started by anything suspicious, and
  sweeping them in made explorer.exe one incident per host again (measured on simulated fleets).
* **Window.** An incident is live while its outliers come less than ``window`` apart (default one
  hour): every event of its tree joins it while less than ``window`` after its latest outlier,
  outlier or not (the analyst reads the whole story). An outlier after a longer quiet opens a
  new incident of the same root (a new id).
* **Before the first outlier.** Events of a tree before any outlier (the root's creation, its
  module loads) wait in a bounded per-process buffer; when an incident opens, the buffered events
  of its root's tree less than ``window`` before the opening outlier join it, and come out as
  links to events of earlier batches (the sink sets their stored incident id).
* **Id.** ``sha256(model | computer | root GUID)`` (plus the opening outlier's time for a later
  incident of the same root): two consumers, or a replay, name the same incident alike.

The ranking score (`Incident.score`) weighs more than the highest event score: a story that spans
several event types, many distinct outlier texts and a root running never-seen binaries ranks
above a lone odd event with the same peak score.

Memory is bounded: processes (oldest first out), buffered events per process and in all, and
open incidents (expired first). What is forgotten only coarsens the grouping: a process evicted
before its children's outliers no longer roots them, and a root whose expired incident was
forgotten names its first incident's id again (the store merges the two).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from plugin.detect.context import ContextModel, own_image
from plugin.detect.lineage import guid

INCIDENT_WINDOW = timedelta(hours=1)
MAX_TEXTS = 10  # distinct outlier texts an incident shows
MAX_PROCESSES = 200_000
MAX_PENDING_PER_PROCESS = 64  # buffered events of one process before its tree's first outlier
MAX_PENDING = 200_000  # buffered events in all
MAX_OPEN = 20_000  # incidents remembered (live ones, and expired ones until space is needed)
MAX_DEPTH = 64  # ancestors walked
MAX_SUBTREE = 10_000  # processes searched for buffered events when an incident opens
MAX_NOVEL = 32  # never-seen paths remembered per process
MAX_DISTINCT = 10_000  # distinct texts and alerts one incident counts in memory

# ranking weights (see `Incident.score`)
W_TEXTS = 0.5
W_OUTLIERS = 0.25
W_TYPES = 0.25
MAX_TYPES = 6
W_NOVEL = 0.5
MAX_NOVEL_COUNTED = 4


def incident_id(model: str, computer: str | None, root_guid: str, opened: str = "") -> str:
    """The incident's id: the same for every consumer that sees the same events."""
    key = f"{model}|{(computer or '').lower()}|{root_guid}" + (f"|{opened}" if opened else "")
    return hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Observed:
    """One scored event as grouping sees it."""

    event_key: str
    computer: str | None
    ts: datetime | None
    event_id: int
    process: str | None  # the GUID of the process it belongs to
    parent: str | None  # for a creation: the parent's GUID
    image: str | None  # the process's Image as logged (shown as the root image)
    text: str  # canonical text
    score: float
    is_outlier: bool
    suppressed: bool = False  # an outlier whose alert a rule suppressed: it opens nothing
    alert_id: str | None = None  # the alert an outlier folds into
    target: str | None = None  # the GUID of the process it acts on (ProcessAccess and the like)

    @property
    def opens(self) -> bool:
        """May start an incident or flag its process."""
        return self.is_outlier and not self.suppressed


def observe(event_key: str, computer: str | None, ts: datetime | None, event_id: int,
            fields: dict, text: str, score: float, is_outlier: bool, *,
            suppressed: bool = False, alert_id: str | None = None) -> Observed:
    """An `Observed` from an event's parsed fields (field names in any case)."""
    low = {str(k).lower(): v for k, v in fields.items()} if isinstance(fields, dict) else {}
    if event_id == 1:
        process, parent = guid(low.get("processguid")), guid(low.get("parentprocessguid"))
        image = low.get("image")
    elif guid(low.get("processguid")) is not None:
        process, parent, image = guid(low.get("processguid")), None, low.get("image")
    else:  # the actor of a ProcessAccess or CreateRemoteThread
        process, parent, image = guid(low.get("sourceprocessguid")), None, low.get("sourceimage")
    image = image if isinstance(image, str) and image else None
    target = guid(low.get("targetprocessguid"))
    return Observed(event_key, computer, ts, int(event_id), process, parent, image, text,
                    float(score), bool(is_outlier), suppressed, alert_id,
                    target if target != process else None)


@dataclass(slots=True)
class _Process:
    """A process as grouping remembers it: one per process of every host for as long as it is
    kept, so small (its sets and lists made when first needed)."""

    parent: str | None = None
    image: str | None = None
    flagged: bool = False
    novel: set[str] | None = None
    children: list[str] | None = None
    #: events before its tree's first outlier, packed (`_pack`): a consumer buffers hundreds of
    #: thousands, and as tuples of str, datetime and float each took ~250 bytes against ~90
    pending: list[bytes] | None = None


#: a buffered event's fixed part: its time (microseconds since the epoch), whether that time
#: has a zone, whether it has one at all, event id, score, outlier; then its key, NUL, alert id
_PENDING = struct.Struct("<q??id?")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)


def _pack(key: str, ts: datetime | None, event_id: int, score: float, is_outlier: bool,
          alert_id: str | None) -> bytes:
    aware = ts is not None and ts.tzinfo is not None
    us = 0 if ts is None else (ts - (_EPOCH if aware else _EPOCH_NAIVE)) // _US
    return (_PENDING.pack(us, aware, ts is not None, event_id, float(score), bool(is_outlier))
            + key.encode() + b"\0" + (alert_id or "").encode())


def _unpack(packed: bytes) -> tuple[str, datetime | None, int, float, bool, str | None]:
    us, aware, has_ts, event_id, score, is_outlier = _PENDING.unpack_from(packed)
    key, _, alert = packed[_PENDING.size:].decode().partition("\0")
    ts = ((_EPOCH if aware else _EPOCH_NAIVE) + us * _US) if has_ts else None
    return key, ts, event_id, score, is_outlier, alert or None


@dataclass
class Incident:
    """One story: a root process, its tree's events in the window, and what ranks it."""

    incident_id: str
    model: str
    computer: str | None
    root_guid: str
    root_image: str | None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    last_outlier: datetime | None = None  # the window runs from here
    events: int = 0
    outliers: int = 0  # outlier events (suppressed ones included)
    max_score: float = 0.0
    texts: list[str] = field(default_factory=list)  # distinct outlier texts, the first MAX_TEXTS
    distinct_texts: int = 0
    event_types: set[int] = field(default_factory=set)
    alert_ids: set[str] = field(default_factory=set)
    root_novel: int = 0  # never-seen paths the root process's own events name
    tree: bool = True  # holds the root's descendants (False: a root that was not flagged)
    _text_seen: set[str] = field(default_factory=set, repr=False)

    @property
    def score(self) -> float:
        """The ranking score: the highest event score, plus breadth.

            max event score
            + 0.5  * log2(1 + distinct outlier texts)
            + 0.25 * log2(1 + outlier events)
            + 0.25 * (distinct event ids, at most 6, - 1)
            + 0.5  * never-seen paths of the root (at most 4)

        Logarithms, caps: a long story outranks a short one without one huge tree of repeated
        noise outranking everything. A lone outlier of score s ranks at s + 0.75.
        """
        return (self.max_score + W_TEXTS * math.log2(1 + self.distinct_texts)
                + W_OUTLIERS * math.log2(1 + self.outliers)
                + W_TYPES * (min(len(self.event_types), MAX_TYPES) - 1 if self.event_types else 0)
                + W_NOVEL * min(self.root_novel, MAX_NOVEL_COUNTED))

    def add(self, ts: datetime | None, event_id: int, score: float, is_outlier: bool,
            opens: bool, text: str | None, alert_id: str | None) -> None:
        self.events += 1
        self.event_types.add(event_id)
        self.max_score = max(self.max_score, score)
        if ts is not None:
            self.first_seen = ts if self.first_seen is None else min(self.first_seen, ts)
            self.last_seen = ts if self.last_seen is None else max(self.last_seen, ts)
        if alert_id and len(self.alert_ids) < MAX_DISTINCT:
            self.alert_ids.add(alert_id)
        if not is_outlier:
            return
        self.outliers += 1
        if opens and ts is not None:
            self.last_outlier = ts if self.last_outlier is None else max(self.last_outlier, ts)
        if (opens and text is not None and text not in self._text_seen
                and len(self._text_seen) < MAX_DISTINCT):
            self._text_seen.add(text)
            self.distinct_texts += 1
            if len(self.texts) < MAX_TEXTS:
                self.texts.append(text)

    def row(self) -> dict[str, Any]:
        """The incident as stored and published (running totals of this grouper)."""
        return {"incident_id": self.incident_id, "model": self.model, "computer": self.computer,
                "root_guid": self.root_guid, "root_image": self.root_image,
                "first_seen": self.first_seen, "last_seen": self.last_seen,
                "events": self.events, "outliers": self.outliers, "alerts": len(self.alert_ids),
                "score": round(self.score, 4), "status": "open", "texts": list(self.texts),
                "event_types": sorted(self.event_types), "root_novel": self.root_novel}


@dataclass
class Grouped:
    """What one `IncidentGrouper.add` call decided."""

    links: dict[str, str] = field(default_factory=dict)  # event_key -> incident_id
    incidents: dict[str, Incident] = field(default_factory=dict)  # the incidents that grew
    alerts: dict[str, set[str]] = field(default_factory=dict)  # incident_id -> alerts joined


class IncidentGrouper:
    """Groups one model's scored events into incidents, call after call, in log order."""

    def __init__(self, model: str, context: ContextModel | None = None,
                 window: timedelta = INCIDENT_WINDOW, *, max_processes: int = MAX_PROCESSES,
                 max_pending: int = MAX_PENDING, max_open: int = MAX_OPEN) -> None:
        if window <= timedelta(0):
            raise ValueError("incident window must be positive")
        self.model = model
        self.context = context
        self.window = window
        self.max_processes = max_processes
        self.max_pending = max_pending
        self.max_open = max_open
        self._procs: dict[tuple[str, str], _Process] = {}
        self._open: dict[tuple[str, str], Incident] = {}  # (host, root guid) -> latest incident
        self._pending = 0
        self._newest: dict[str, datetime] = {}  # host -> newest event time

    # -- the walk ------------------------------------------------------------------------------
    def add(self, events: Iterable[Observed]) -> Grouped:
        out = Grouped()
        for ob in events:
            self._step(ob, out)
        return out

    def _step(self, ob: Observed, out: Grouped) -> None:
        if ob.process is None:
            return
        host = (ob.computer or "").lower()
        if ob.ts is not None and (host not in self._newest or ob.ts > self._newest[host]):
            self._newest[host] = ob.ts
        proc = self._process(host, ob)
        novel = self._novel_paths(ob.text)
        if novel and len(proc.novel or ()) < MAX_NOVEL:
            if proc.novel is None:
                proc.novel = set()
            proc.novel.update(novel[:MAX_NOVEL - len(proc.novel)])
        chain = self._chain(host, ob.process)
        enclosing = self._enclosing(host, chain, ob.ts)
        flagged = ([i for i, g in enumerate(chain) if self._flagged(host, g)]
                   if ob.opens or enclosing is None else [])
        acted_on = (self._enclosing(host, self._chain(host, ob.target), ob.ts)
                    if ob.target is not None and enclosing is None and not flagged else None)
        if acted_on is not None:
            inc = acted_on[1]
        elif ob.opens:
            root = flagged[-1] if flagged else 0
            if enclosing is not None and enclosing[0] >= root:
                inc = enclosing[1]
            else:
                inc = self._open_incident(host, chain[root], bool(flagged), ob, out)
        elif enclosing is not None:
            inc = enclosing[1]
        else:
            target = (self._procs.get((host, ob.target)) if ob.target is not None and not flagged
                      else None)
            self._buffer(target if target is not None else proc, ob)
            return
        self._join(inc, out, ob.event_key, ob.ts, ob.event_id, ob.score, ob.is_outlier,
                   ob.opens, ob.text, ob.alert_id)
        if ob.process == inc.root_guid:
            inc.root_novel = max(inc.root_novel, len(proc.novel or ()))

    def _process(self, host: str, ob: Observed) -> _Process:
        key = (host, ob.process)
        proc = self._procs.get(key)
        if proc is None:
            if len(self._procs) >= self.max_processes:  # oldest first out: dicts keep order
                old = self._procs.pop(next(iter(self._procs)))
                self._pending -= len(old.pending or ())
            proc = self._procs[key] = _Process()
        if ob.event_id == 1:
            if ob.parent is not None and proc.parent is None:
                proc.parent = ob.parent
                parent = self._procs.get((host, ob.parent))
                if parent is not None and len(parent.children or ()) < MAX_SUBTREE:
                    if parent.children is None:
                        parent.children = []
                    parent.children.append(ob.process)
            proc.image = ob.image or proc.image or own_image(ob.text)
            proc.flagged = proc.flagged or ob.opens or self._novel_image(ob.text)
        elif proc.image is None:  # its creation is not in the logs: any event names it too
            proc.image = ob.image
        return proc

    def _chain(self, host: str, g: str) -> list[str]:
        """The process and its known ancestors, nearest first."""
        chain = [g]
        seen = {g}
        proc = self._procs.get((host, g))
        while (proc is not None and proc.parent and proc.parent not in seen
               and len(chain) < MAX_DEPTH):
            chain.append(proc.parent)
            seen.add(proc.parent)
            proc = self._procs.get((host, proc.parent))
        return chain

    def _flagged(self, host: str, g: str) -> bool:
        proc = self._procs.get((host, g))
        return proc is not None and proc.flagged

    def _live(self, inc: Incident, ts: datetime | None) -> bool:
        return ts is None or inc.last_outlier is None or ts - inc.last_outlier < self.window

    def _enclosing(self, host: str, chain: Sequence[str],
                   ts: datetime | None) -> tuple[int, Incident] | None:
        """The topmost live incident rooted on the chain that holds the chain's first process
        (its own process's, or an ancestor's holding its tree), with its place in the chain."""
        for i in range(len(chain) - 1, -1, -1):
            inc = self._open.get((host, chain[i]))
            if inc is not None and (i == 0 or inc.tree) and self._live(inc, ts):
                return i, inc
        return None

    def _open_incident(self, host: str, root: str, tree: bool, ob: Observed,
                       out: Grouped) -> Incident:
        previous = self._open.get((host, root))
        opened = "" if previous is None else (ob.ts.isoformat() if ob.ts else ob.event_key)
        proc = self._procs.get((host, root))
        inc = Incident(incident_id(self.model, ob.computer, root, opened), self.model, ob.computer,
                       root, proc.image if proc is not None else None,
                       root_novel=len(proc.novel or ()) if proc is not None else 0, tree=tree)
        self._open.pop((host, root), None)
        self._open[(host, root)] = inc
        if len(self._open) > self.max_open:
            self._forget_incidents()
        self._pull_pending(host, root, inc, ob.ts, out)
        return inc

    def _pull_pending(self, host: str, root: str, inc: Incident, ts: datetime | None,
                      out: Grouped) -> None:
        """Buffered events of the incident's processes (the root, and its tree when the
        incident holds it) less than the window before ``ts`` join."""
        todo, seen = [root], {root}
        while todo and len(seen) <= MAX_SUBTREE:
            g = todo.pop()
            proc = self._procs.get((host, g))
            if proc is None:
                continue
            for c in (proc.children or ()) if inc.tree else ():
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
            if not proc.pending:
                continue
            self._pending -= len(proc.pending)
            for key, t, event_id, score, is_outlier, alert_id in map(_unpack, proc.pending):
                if ts is None or t is None or ts - t < self.window:
                    self._join(inc, out, key, t, event_id, score, is_outlier, False, None, alert_id)
            proc.pending = None

    def _join(self, inc: Incident, out: Grouped, key: str, ts: datetime | None, event_id: int,
              score: float, is_outlier: bool, opens: bool, text: str | None,
              alert_id: str | None) -> None:
        inc.add(ts, event_id, score, is_outlier, opens, text, alert_id)
        out.links[key] = inc.incident_id
        out.incidents[inc.incident_id] = inc
        if alert_id:
            out.alerts.setdefault(inc.incident_id, set()).add(alert_id)

    def _buffer(self, proc: _Process, ob: Observed) -> None:
        if proc.pending is None:
            proc.pending = []
        if len(proc.pending) >= MAX_PENDING_PER_PROCESS:  # its oldest out
            del proc.pending[0]
            self._pending -= 1
        proc.pending.append(_pack(ob.event_key, ob.ts, ob.event_id, ob.score, ob.is_outlier,
                                  ob.alert_id))
        self._pending += 1
        if self._pending > self.max_pending:
            self._forget_pending()

    # -- bounds --------------------------------------------------------------------------------
    def _forget_pending(self) -> None:
        """Drop the oldest processes' buffers until a quarter of the budget is free."""
        for proc in self._procs.values():
            if self._pending <= self.max_pending * 3 // 4:
                break
            if proc.pending:
                self._pending -= len(proc.pending)
                proc.pending = None

    def _forget_incidents(self) -> None:
        """Drop expired incidents (by their host's newest event), then the oldest."""
        keep = {k: inc for k, inc in self._open.items()
                if self._live(inc, self._newest.get(k[0]))}
        while len(keep) > self.max_open * 3 // 4:
            keep.pop(next(iter(keep)))
        self._open = keep

    # -- novelty -------------------------------------------------------------------------------
    def _novel_paths(self, text: str) -> list[str]:
        return self.context.novel(text) if self.context is not None else []

    def _novel_image(self, text: str) -> bool:
        """Whether a creation runs an image the baseline never saw (its own, not its parent's)."""
        if self.context is None:
            return False
        image = own_image(text)
        return image is not None and image not in self.context.images


def ranked(incidents: Iterable[Incident]) -> list[Incident]:
    """Highest ranking score first (ties by id, so the order is stable)."""
    return sorted(incidents, key=lambda i: (-i.score, i.incident_id))
