"""Canonical text: the deterministic string a model sees for one event.

Same event, any shape -> byte-identical text. It holds only the schema's text fields, in schema
order, masked (GUIDs, times, hashes, SIDs, random names...) and lower-cased (Windows paths are
case-insensitive, and case varies between renderings). It never holds the computer name, RuleName
or side fields; account names become <domain>\\<user> unless well known, and the event's own user
and host names are masked wherever they appear.
"""

from __future__ import annotations

from typing import Any

from plugin.normalize.event import SysmonEvent
from plugin.normalize.schema import EventSchema, SchemaSet

# Fields never worth text for an event ID without a schema (future Sysmon versions).
_DEFAULT_DROP = frozenset({
    "rulename", "utctime", "processguid", "processid", "parentprocessguid", "parentprocessid",
    "logonguid", "logonid", "hashes", "hash", "sourceprocessguid", "sourceprocessid",
    "targetprocessguid", "targetprocessid", "sourcethreadid", "creationutctime",
    "previouscreationutctime", "newthreadid", "sysmon_blt_sim",
})
#: masked field values kept (~0.3 KB each); emptied when full (a refill is a regex pass per
#: value, cheap beside the lookups an LRU would add to every field of every event)
_CACHE_LIMIT = 200_000


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None  # nested structures never reach the text


class CanonicalText:
    """Builds canonical texts; caches masked field values (they repeat heavily in real logs)."""

    def __init__(self, schemas: SchemaSet, cache_entries: int | None = None) -> None:
        """``cache_entries``: masked field values kept (None: `_CACHE_LIMIT`)."""
        self.schemas = schemas
        self.cache_entries = cache_entries if cache_entries is not None else _CACHE_LIMIT
        self._cache: dict[tuple[str, str], str] = {}

    def _mask_field(self, lname: str, value: str, schema: EventSchema | None) -> str:
        key = (lname, value)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        s = self.schemas
        if lname in s.account_fields:
            out = value.lower() if value.lower() in s.well_known_accounts else "<domain>\\<user>"
        else:
            out = s.mask(value)  # global masks first: a field mask must not split a date
            if schema is not None:
                for mask in schema.field_masks.get(lname, ()):
                    out = mask.apply(out)
            out = " ".join(out.split()).lower()
            if len(out) > s.max_field_chars:
                out = out[: s.max_field_chars] + "<cut>"
        if len(self._cache) >= self.cache_entries:
            self._cache.clear()
        self._cache[key] = out
        return out

    def build(self, ev: SysmonEvent) -> str:
        schema = self.schemas.for_event(ev.event_id)
        by_lower = {k.lower(): v for k, v in ev.fields.items() if isinstance(k, str)}
        if schema is not None:
            names = [n.lower() for n in schema.text_fields]
        else:
            names = sorted(k for k in by_lower if k not in _DEFAULT_DROP)
        parts = [f"eid={ev.event_id}"]
        empty = self.schemas.empty_values
        for lname in names:
            value = _as_text(by_lower.get(lname))
            if value is None or value.strip() in empty:
                continue
            parts.append(f"{lname}={self._mask_field(lname, value, schema)}")
        text = " ".join(parts)
        return self._mask_context(text, ev)

    def _mask_context(self, text: str, ev: SysmonEvent) -> str:
        """Mask this event's own user and host names wherever they appear in the text."""
        names = []
        if ev.user and "\\" in ev.user:
            domain, _, user = ev.user.partition("\\")
            if ev.user.lower() not in self.schemas.well_known_accounts:
                names.append((user, "<user>"))
                names.append((domain, "<domain>"))
        if ev.computer:
            names.append((ev.computer.split(".", 1)[0], "<host>"))
        for name, token in names:
            n = name.lower()
            if len(n) >= 3 and n not in ("nt authority", "system") and n in text:
                text = text.replace(n, token)
        return text
