"""Process lineage: an event's ancestor chain by ParentProcessGuid, for explanations.

The walk is the same everywhere; where the process-creation events come from differs: `enrich`
looks them up in the store (`Store.process_creation`), `import` in the process creations it has seen
so far in this run (`ProcessIndex`, in memory: a query per ancestor of every outlier would cost
a table scan each). Sysmon logs a parent's creation before its children's, so within one import
the chain reaches as far as the evidence does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

MAX_LINEAGE = 12
Lookup = Callable[[str], "dict | None"]  # process guid -> {process_guid, image, command_line, ...}


def guid(v: Any) -> str | None:
    """A process GUID in one spelling (no braces or whitespace, lower case), or None.

    None also for an empty or all-zero GUID: Sysmon writes ``{00000000-0000-0000-0000-000000000000}``
    for "unknown", and treating it as a process would join unrelated processes (lineage, the
    context carry, attack labels). The one normalizer for every process join in `plugin.detect`.
    """
    if not isinstance(v, str):
        return None
    g = v.strip().strip("{}").strip().lower()
    if not g or set(g) <= {"0", "-"}:
        return None
    return g


def lineage(fields: dict, lookup: Lookup) -> list[dict]:
    """Ancestors of the event's process, nearest first, as far as `lookup` reaches."""
    low = {str(k).lower(): v for k, v in fields.items()}
    chain: list[dict] = []
    g = guid(low.get("parentprocessguid"))
    if g is None and low.get("processguid"):
        first = lookup(guid(low.get("processguid")) or "")
        if first is None:
            return chain
        g = first["parent_guid"]
    seen: set[str] = set()
    while g and g not in seen and len(chain) < MAX_LINEAGE:
        seen.add(g)
        proc = lookup(g)
        if proc is None:
            chain.append({"process_guid": g, "image": None, "note": "not in the stored events"})
            break
        chain.append({k: proc.get(k) for k in ("process_guid", "image", "command_line", "event_key", "ts")})
        g = proc["parent_guid"]
    return chain


class ProcessIndex:
    """Process creations (event 1) seen in this run, by ProcessGuid; bounded in memory."""

    def __init__(self, max_entries: int = 500_000) -> None:
        self._procs: dict[str, dict] = {}
        self.max_entries = max_entries

    def add(self, events) -> None:
        for e in events:
            if e.event_id != 1 or not e.fields:
                continue
            try:
                f = orjson.loads(e.fields)
            except orjson.JSONDecodeError:
                continue
            low = {str(k).lower(): v for k, v in f.items()}
            g = guid(low.get("processguid"))
            if g is None:
                continue
            if len(self._procs) >= self.max_entries:  # oldest first out: dicts keep order
                self._procs.pop(next(iter(self._procs)))
            self._procs[g] = {"process_guid": g, "event_key": e.event_key,
                              "ts": e.ts.isoformat() if e.ts else None,
                              "image": low.get("image"), "command_line": low.get("commandline"),
                              "parent_guid": guid(low.get("parentprocessguid"))}

    def get(self, g: str) -> dict | None:
        return self._procs.get(g)

    def lineage_of(self, fields_json: str) -> list[dict]:
        try:
            f = orjson.loads(fields_json) if fields_json else {}
        except orjson.JSONDecodeError:
            return []
        return lineage(f, self.get) if isinstance(f, dict) else []
