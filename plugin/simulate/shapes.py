"""Shapes: one `SimEvent` as a winlogbeat 8, NXLog (im_msvistalog) or evtx-JSON record.

Why a module of its own: the shapes mimic three real collectors' output, field for field, and
change for reasons of their own (a collector version, a new shape); none of that concerns how
events are simulated. `render` is a pure function of the event unless given an `rng`;
`simulate_records` renders the simulated stream with a per-seed rng (ingest-time jitter, `mixed`).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

from .engine import generate
from .event import LABEL_KEY, SimEvent

__all__ = ["PROVIDER", "PROVIDER_GUID", "SHAPES", "render", "simulate_records"]

PROVIDER = "Microsoft-Windows-Sysmon"
PROVIDER_GUID = "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}"
SHAPES = ("winlogbeat8", "nxlog", "evtxjson", "mixed")
_LOCAL_OFFSET_MS = -5 * 3600 * 1000  # NXLog EventTime: local time of the fleet (UTC-5)

# event id -> (message title, winlogbeat task, event version)
_META: dict[int, tuple[str, str, int]] = {
    1: ("Process Create", "Process Create (rule: ProcessCreate)", 5),
    3: ("Network connection detected", "Network connection detected (rule: NetworkConnect)", 5),
    5: ("Process terminated", "Process terminated (rule: ProcessTerminate)", 3),
    7: ("Image loaded", "Image loaded (rule: ImageLoad)", 3),
    10: ("Process accessed", "Process accessed (rule: ProcessAccess)", 3),
    11: ("File created", "File created (rule: FileCreate)", 2),
    12: ("Registry object added or deleted", "Registry object added or deleted (rule: RegistryEvent)", 2),
    13: ("Registry value set", "Registry value set (rule: RegistryEvent)", 2),
    22: ("Dns query", "Dns query (rule: DnsQuery)", 5),
}
# EventData fields pyevtx-rs renders as numbers / booleans (Sysmon manifest types).
_INT_FIELDS = frozenset({
    "ProcessId", "ParentProcessId", "TerminalSessionId", "SourcePort", "DestinationPort",
    "SourceProcessId", "SourceThreadId", "TargetProcessId",
})
_BOOL_FIELDS = frozenset({"Initiated", "SourceIsIpv6", "DestinationIsIpv6"})

Renderer = Callable[[SimEvent, random.Random | None], dict[str, Any]]


def _iso_ms(dt: datetime) -> str:
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z")


def _plain(dt: datetime) -> str:
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} {dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}")


def _message(ev: SimEvent) -> str:
    title = _META.get(ev.event_id, ("Sysmon event",))[0]
    return f"{title}:\r\n" + "\r\n".join(f"{k}: {v}" for k, v in ev.fields.items())


def _delay_ms(ev: SimEvent, rng: random.Random | None) -> int:
    """Ingest delay: a few seconds after the event (deterministic per event without an rng)."""
    if rng is not None:
        return rng.randint(800, 4800)
    return 800 + (ev.record_id * 2654435761) % 4000


def _thread_id(ev: SimEvent) -> int:
    return 4 * (900 + (ev.record_id * 7919) % 1500)


def _render_winlogbeat8(ev: SimEvent, rng: random.Random | None) -> dict[str, Any]:
    ingest = ev.utc_time + timedelta(milliseconds=_delay_ms(ev, rng))
    code = str(ev.event_id)
    task = _META.get(ev.event_id, ("", "Sysmon event", 0))[1]
    return {
        "@timestamp": _iso_ms(ingest),
        "ecs": {"version": "8.0.0"},
        "event": {"code": code, "provider": PROVIDER, "kind": "event",
                  "created": _iso_ms(ingest + timedelta(milliseconds=7)),
                  "action": task.split(" (rule: ")[0]},
        "winlog": {
            "channel": ev.channel, "computer_name": ev.computer, "event_id": code,
            "record_id": ev.record_id, "provider_name": PROVIDER, "provider_guid": PROVIDER_GUID,
            "process": {"pid": ev.sysmon_pid, "thread": {"id": _thread_id(ev)}},
            "user": {"identifier": "S-1-5-18", "domain": "NT AUTHORITY", "name": "SYSTEM",
                     "type": "User"},
            "event_data": dict(ev.fields), "opcode": "Info", "task": task,
            "version": _META.get(ev.event_id, ("", "", 1))[2],
            "api": "wineventlog",
        },
        "host": {"name": ev.computer.split(".", 1)[0]},
        "agent": {"type": "winlogbeat", "version": "8.11.0"},
        "log": {"level": "information"},
        "message": _message(ev),
        LABEL_KEY: dict(ev.label),
    }


def _render_nxlog(ev: SimEvent, rng: random.Random | None) -> dict[str, Any]:
    local = ev.utc_time + timedelta(milliseconds=_LOCAL_OFFSET_MS)
    received = local + timedelta(milliseconds=_delay_ms(ev, rng))
    meta = _META.get(ev.event_id, ("Sysmon event", "Sysmon event", 1))
    doc: dict[str, Any] = {
        "EventTime": _plain(local), "Hostname": ev.computer, "Keywords": -9223372036854775808,
        "EventType": "INFO", "SeverityValue": 2, "Severity": "INFO", "EventID": ev.event_id,
        "SourceName": PROVIDER, "ProviderGuid": PROVIDER_GUID, "Version": meta[2], "Task": 1 if
        ev.event_id == 1 else ev.event_id, "OpcodeValue": 0, "RecordNumber": ev.record_id,
        "ExecutionProcessID": ev.sysmon_pid, "ThreadID": _thread_id(ev), "Channel": ev.channel,
        "Domain": "NT AUTHORITY", "AccountName": "SYSTEM", "UserID": "S-1-5-18",
        "AccountType": "User", "Message": _message(ev), "Category": meta[1], "Opcode": "Info",
    }
    doc.update(ev.fields)  # Sysmon's own EventType (SetValue...) replaces NXLog's
    doc["EventReceivedTime"] = _plain(received)
    doc["SourceModuleName"] = "eventlog"
    doc["SourceModuleType"] = "im_msvistalog"
    doc[LABEL_KEY] = dict(ev.label)
    return doc


def _render_evtx(ev: SimEvent, rng: random.Random | None) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for k, v in ev.fields.items():
        if k in _INT_FIELDS and v.isdigit():
            data[k] = int(v)
        elif k in _BOOL_FIELDS:
            data[k] = v == "true"
        else:
            data[k] = v
    sys_us = ev.utc_time.microsecond // 1000 * 1000 + (ev.record_id * 37) % 1000
    st = ev.utc_time.replace(microsecond=sys_us)
    meta = _META.get(ev.event_id, ("", "", 1))
    return {
        "Event": {
            "#attributes": {"xmlns": "http://schemas.microsoft.com/win/2004/08/events/event"},
            "System": {
                "Provider": {"#attributes": {"Name": PROVIDER, "Guid": PROVIDER_GUID}},
                "EventID": ev.event_id, "Version": meta[2], "Level": 4, "Task": ev.event_id,
                "Opcode": 0, "Keywords": "0x8000000000000000",
                "TimeCreated": {"#attributes": {"SystemTime": _plain(st).replace(" ", "T")
                                                + f".{st.microsecond:06d}Z"}},
                "EventRecordID": ev.record_id, "Correlation": None,
                "Execution": {"#attributes": {"ProcessID": ev.sysmon_pid, "ThreadID": _thread_id(ev)}},
                "Channel": ev.channel, "Computer": ev.computer,
                "Security": {"#attributes": {"UserID": "S-1-5-18"}},
            },
            "EventData": data,
        },
        LABEL_KEY: dict(ev.label),
    }


_RENDERERS: dict[str, Renderer] = {
    "winlogbeat8": _render_winlogbeat8, "nxlog": _render_nxlog, "evtxjson": _render_evtx,
}


def render(ev: SimEvent, shape: str, rng: random.Random | None = None) -> dict[str, Any]:
    """Render one event as a record of `shape` (with the side label at top level).

    `mixed` picks winlogbeat8 or nxlog (with `rng`, else from the record id). `rng` also
    jitters ingest times; without it the rendering is a pure function of the event.
    """
    fn = _RENDERERS.get(shape)
    if fn is None:
        if shape != "mixed":
            raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")
        pick = rng.random() < 0.5 if rng is not None else (ev.record_id * 40503 >> 7) & 1
        fn = _render_winlogbeat8 if pick else _render_nxlog
    return fn(ev, rng)


def simulate_records(n: int, *, seed: int = 0, anomaly_rate: float = 0.01,
                     shape: str = "winlogbeat8", **kw: Any) -> Iterator[dict[str, Any]]:
    """Lazily yield `n` rendered records (`kw`: novel_rate, hosts, start of `generate`)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")
    rrng = random.Random(f"render:{seed}")
    fn = _RENDERERS.get(shape)
    gen = generate(n, seed=seed, anomaly_rate=anomaly_rate, **kw)
    if fn is not None:
        return (fn(ev, rrng) for ev in gen)
    return (render(ev, shape, rrng) for ev in gen)
