"""Detect a record's shape and map it to a SysmonEvent.

Shapes: pyevtx-rs EVTX JSON, rendered event XML (Splunk XmlWinEventLog, Kafka), Winlogbeat 7/8
(`winlog.*`), Winlogbeat 6 (`event_data`), Azure Sentinel (`EventData` as a JSON or XML string),
NXLog im_msvistalog and the flat JSON of the OTRF data sets (EventData fields beside the
envelope). Times come only from Sysmon's `UtcTime`, then the System `TimeCreated/@SystemTime`:
NXLog `EventTime` and flat `TimeCreated` are local times and `@timestamp` is an ingest time.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import orjson

from plugin.normalize.event import SysmonEvent, parse_utc

SYSMON_PROVIDER = "microsoft-windows-sysmon"
SYSMON_CHANNEL = "microsoft-windows-sysmon/operational"
SIDE_LABEL = "sysmon_blt_sim"  # the simulator's label: a side field in every shape


class BadRecord(ValueError):
    """A record that cannot be understood; becomes a dead-letter row with this reason."""


def is_sysmon(provider: object, channel: object) -> bool:
    return (isinstance(provider, str) and provider.lower() == SYSMON_PROVIDER) or (
        isinstance(channel, str) and channel.lower() == SYSMON_CHANNEL
    )


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        s = value.strip()
        if s.isdigit():
            return int(s)
    if isinstance(value, dict):  # {"#text": "1", "#attributes": {...}}
        return _int(value.get("#text"))
    return None


def _event_id(value: object) -> int:
    eid = _int(value)
    if eid is None or not 0 <= eid <= 65535:
        raise BadRecord(f"Sysmon record has no valid EventID ({str(value)[:40]!r})")
    return eid


def _str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return None


def _flatten_value(value: Any) -> Any:
    """EVTX JSON renders some values as {"#text": ...}; keep the text."""
    if isinstance(value, dict) and "#text" in value:
        return value["#text"]
    return value


def _user_of(fields: dict[str, Any], fallback: str | None = None) -> str | None:
    for name in ("User", "SourceUser", "TargetUser", "user"):
        v = fields.get(name)
        if isinstance(v, str) and v and v != "-":
            return v
    return fallback


def _utc_from_fields(fields: dict[str, Any]):
    return parse_utc(fields.get("UtcTime"))


# ---------------------------------------------------------------------------------- EVTX / XML


def _from_event_dict(ev: object, shape: str) -> SysmonEvent | None:
    if not isinstance(ev, dict):
        raise BadRecord("'Event' is not an object")
    system = ev.get("System")
    if not isinstance(system, dict):
        raise BadRecord("record has no System part")
    provider = system.get("Provider")
    pname = provider.get("#attributes", {}).get("Name") if isinstance(provider, dict) else None
    if isinstance(provider, dict) and pname is None:
        pname = provider.get("Name")
    channel = _str(system.get("Channel"))
    if not is_sysmon(pname, channel):
        return None
    event_id = _event_id(system.get("EventID"))
    data = ev.get("EventData")
    fields: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if k != "#attributes":
                fields[k] = _flatten_value(v)
    elif data is not None and not isinstance(data, (list, str)):
        raise BadRecord("EventData is not an object")
    tc = system.get("TimeCreated")
    sys_time = None
    if isinstance(tc, dict):
        attrs = tc.get("#attributes", tc)
        sys_time = attrs.get("SystemTime") if isinstance(attrs, dict) else None
    utc = _utc_from_fields(fields) or parse_utc(sys_time)
    sec = system.get("Security")
    sid = None
    if isinstance(sec, dict):
        attrs = sec.get("#attributes", sec)
        sid = attrs.get("UserID") if isinstance(attrs, dict) else None
    return SysmonEvent(
        event_id=event_id,
        computer=_str(system.get("Computer")),
        channel=channel,
        record_id=_int(system.get("EventRecordID")),
        utc_time=utc,
        user=_user_of(fields, _str(sid)),
        fields=fields,
        shape=shape,
    )


def _xml_to_event_dict(text: str) -> dict:
    """Rendered event XML -> the dict shape pyevtx-rs produces, so one mapper serves both."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BadRecord(f"invalid event XML: {exc}") from exc

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    if local(root.tag) != "Event":
        raise BadRecord(f"XML root is <{local(root.tag)}>, not <Event>")
    out: dict[str, Any] = {}
    for part in root:
        name = local(part.tag)
        if name == "System":
            system: dict[str, Any] = {}
            for child in part:
                cname = local(child.tag)
                if child.attrib and not (child.text or "").strip():
                    system[cname] = {"#attributes": dict(child.attrib)}
                else:
                    system[cname] = (child.text or "").strip()
            out["System"] = system
        elif name in ("EventData", "UserData"):
            data: dict[str, Any] = {}
            for i, child in enumerate(part.iter()):
                if child is part:
                    continue
                key = child.attrib.get("Name") or f"Data{i}"
                data[key] = child.text or ""
            out["EventData"] = data
    return out


# ---------------------------------------------------------------------------------- Beats


def _from_winlogbeat78(doc: dict) -> SysmonEvent | None:
    winlog = doc.get("winlog")
    if not isinstance(winlog, dict):
        raise BadRecord("'winlog' is not an object")
    event = doc.get("event") if isinstance(doc.get("event"), dict) else {}
    provider = winlog.get("provider_name") or event.get("provider")
    channel = _str(winlog.get("channel"))
    if not is_sysmon(provider, channel):
        return None
    eid = winlog.get("event_id", event.get("code"))
    fields = winlog.get("event_data") or {}
    if not isinstance(fields, dict):
        raise BadRecord("winlog.event_data is not an object")
    fields = dict(fields)
    user = winlog.get("user") if isinstance(winlog.get("user"), dict) else {}
    fallback = f"{user.get('domain')}\\{user.get('name')}" if user.get("name") else None
    return SysmonEvent(
        event_id=_event_id(eid),
        computer=_str(winlog.get("computer_name")) or _str((doc.get("host") or {}).get("name")
                                                          if isinstance(doc.get("host"), dict) else None),
        channel=channel,
        record_id=_int(winlog.get("record_id")),
        utc_time=_utc_from_fields(fields),
        user=_user_of(fields, fallback),
        fields=fields,
        shape="winlogbeat8" if "ecs" in doc or "@metadata" not in doc else "winlogbeat7",
    )


def _from_winlogbeat6(doc: dict) -> SysmonEvent | None:
    provider = doc.get("source_name")
    channel = _str(doc.get("log_name"))
    if not is_sysmon(provider, channel):
        return None
    fields = doc.get("event_data") or {}
    if not isinstance(fields, dict):
        raise BadRecord("event_data is not an object")
    fields = dict(fields)
    user = doc.get("user") if isinstance(doc.get("user"), dict) else {}
    fallback = f"{user.get('domain')}\\{user.get('name')}" if user.get("name") else None
    return SysmonEvent(
        event_id=_event_id(doc.get("event_id")),
        computer=_str(doc.get("computer_name")),
        channel=channel,
        record_id=_int(doc.get("record_number")),
        utc_time=_utc_from_fields(fields),
        user=_user_of(fields, fallback),
        fields=fields,
        shape="winlogbeat6",
    )


# ---------------------------------------------------------------------------------- Sentinel


def _from_sentinel(doc: dict) -> SysmonEvent | None:
    provider = doc.get("Provider") or doc.get("ProviderName") or doc.get("Source")
    channel = _str(doc.get("Channel"))
    if not is_sysmon(provider, channel):
        return None
    data = doc.get("EventData")
    fields: dict[str, Any]
    if isinstance(data, dict):
        fields = dict(data)
    elif isinstance(data, str) and data.lstrip().startswith("{"):
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadRecord(f"Sentinel EventData is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise BadRecord("Sentinel EventData JSON is not an object")
        fields = parsed
    elif isinstance(data, str) and data.lstrip().startswith("<"):
        fields = _xml_data_items(data)
    else:
        raise BadRecord("Sentinel EventData is neither JSON nor XML")
    return SysmonEvent(
        event_id=_event_id(doc.get("EventID")),
        computer=_str(doc.get("Computer")),
        channel=channel,
        record_id=_int(doc.get("EventRecordId", doc.get("EventRecordID"))),
        utc_time=_utc_from_fields(fields),
        user=_user_of(fields),
        fields=fields,
        shape="sentinel",
    )


def _xml_data_items(text: str) -> dict[str, Any]:
    """Sentinel's XML EventData: `<DataItem><EventData><Data Name="...">v</Data>...`."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BadRecord(f"Sentinel EventData is invalid XML: {exc}") from exc
    out: dict[str, Any] = {}
    for el in root.iter():
        name = el.attrib.get("Name")
        if name is not None and el.tag.rsplit("}", 1)[-1] == "Data":
            out[name] = el.text or ""
    return out


# ---------------------------------------------------------------------------------- NXLog / flat

# Envelope keys NXLog and the OTRF flat exports put beside the EventData fields.
_FLAT_META = frozenset({
    "SourceName", "ProviderGuid", "Level", "Keywords", "Channel", "Hostname", "TimeCreated",
    "@timestamp", "@version", "EventID", "Message", "Task", "Opcode", "OpcodeValue",
    "SeverityValue", "Severity", "EventReceivedTime", "SourceModuleName", "SourceModuleType",
    "EventTime", "RecordNumber", "ExecutionProcessID", "ThreadID", "Domain", "AccountName",
    "AccountType", "UserID", "port", "tags", "host", "type", "Category", "EventTypeOrignal",
    "ERROR_EVT_UNRESOLVED", "ProcessID", "Version", "EventType",
})
# Sysmon fields whose names NXLog's own envelope also uses: read them from the Message instead.
_COLLIDING = ("EventType", "Version")
_NXLOG_LEVELS = frozenset({"INFO", "AUDIT_SUCCESS", "AUDIT_FAILURE", "WARNING", "ERROR",
                           "VERBOSE", "CRITICAL"})


def _from_flat(doc: dict) -> SysmonEvent | None:
    provider = doc.get("SourceName") or doc.get("ProviderName")
    channel = _str(doc.get("Channel"))
    if not is_sysmon(provider, channel):
        return None
    fields = {k: v for k, v in doc.items() if k not in _FLAT_META}
    message = doc.get("Message")
    for name in _COLLIDING:
        value = doc.get(name)
        from_msg = None
        if isinstance(message, str) and f"{name}: " in message:
            m = re.search(rf"(?:^|\n){name}: ([^\r\n]*)", message)
            from_msg = m.group(1) if m else None
        if from_msg is not None:
            fields[name] = from_msg
        elif isinstance(value, str) and value not in _NXLOG_LEVELS and name == "EventType":
            fields[name] = value
    shape = "nxlog" if doc.get("SourceModuleType") or "EventTime" in doc else "flat"
    fallback = None
    if doc.get("AccountName"):
        fallback = f"{doc.get('Domain')}\\{doc.get('AccountName')}"
    return SysmonEvent(
        event_id=_event_id(doc.get("EventID")),
        computer=_str(doc.get("Hostname") or doc.get("Computer")),
        channel=channel,
        record_id=_int(doc.get("RecordNumber")),
        utc_time=_utc_from_fields(fields),
        user=_user_of(fields, fallback),
        fields=fields,
        shape=shape,
    )


# ---------------------------------------------------------------------------------- dispatch


def map_document(doc: object) -> SysmonEvent | None:
    """Map one parsed record (dict, or XML string) to a SysmonEvent; None when not Sysmon.

    Raises BadRecord for anything malformed; never any other exception for JSON input.
    """
    if isinstance(doc, str):
        if doc.lstrip().startswith("<"):
            return _from_event_dict(_xml_to_event_dict(doc), "xml")
        raise BadRecord("JSON value is a string, not an event object")
    if not isinstance(doc, dict):
        raise BadRecord(f"JSON value is a {type(doc).__name__}, not an object")
    ev = _map_object(doc)
    if ev is not None and SIDE_LABEL in doc:
        ev.fields[SIDE_LABEL] = doc[SIDE_LABEL]  # kept in `fields`, never in the text
    return ev


def _map_object(doc: dict) -> SysmonEvent | None:
    try:
        if "Event" in doc:
            return _from_event_dict(doc["Event"], "evtx")
        if "winlog" in doc:
            return _from_winlogbeat78(doc)
        if "event_data" in doc or "log_name" in doc:
            return _from_winlogbeat6(doc)
        if "EventData" in doc:
            return _from_sentinel(doc)
        for key in ("_raw", "xml", "Xml", "raw_xml"):
            if isinstance(doc.get(key), str) and doc[key].lstrip().startswith("<"):
                return _from_event_dict(_xml_to_event_dict(doc[key]), "xml")
        if "EventID" in doc or "SourceName" in doc:
            return _from_flat(doc)
    except BadRecord:
        raise
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        raise BadRecord(f"unexpected structure: {type(exc).__name__}: {exc}") from exc
    keys = ", ".join(sorted(str(k) for k in doc)[:12])
    raise BadRecord(f"unrecognized record shape (keys: {keys})")


def surely_not_sysmon(raw: bytes) -> bool:
    """True for a JSON object line that names no Sysmon provider or channel anywhere.

    Every Sysmon record in every shape carries "Microsoft-Windows-Sysmon"; skipping the parse of
    the others (a third of the OTRF lines) is the cheapest work there is. A line that does not
    even look like one object still goes through the parser, so garbage is dead-lettered.
    """
    s = raw.strip()
    return (
        s[:1] == b"{" and s[-1:] == b"}"
        and (b"hannel" in s or b"log_name" in s or b"rovider" in s)  # a Windows event envelope
        and b"ysmon" not in s and b"YSMON" not in s
    )


def parse_and_map(raw: bytes | str) -> SysmonEvent | None:
    """Parse one serialized record (a JSON line or event XML) and map it."""
    if isinstance(raw, bytes):
        if surely_not_sysmon(raw):
            return None
        stripped = raw.lstrip()
        if stripped[:1] == b"<":
            try:
                return map_document(stripped.decode("utf-8", "replace"))
            except BadRecord:
                raise
    elif raw.lstrip().startswith("<"):
        return map_document(raw)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"invalid JSON: {exc}") from exc
    return map_document(doc)
