"""Attack labels by process tree, for `sysmon-blt eval --attack-seed REGEX`.

Why a process tree: a capture mixes the attack with the host's ordinary activity, and the only
ground truth Sysmon itself carries is lineage. So the attack is "the processes whose image or
command line match the seed, everything they spawned, and every event those processes did or
suffered". The same labels drop attack trees from a baseline, so a fit sees a clean baseline.

Rules (all pure; no I/O):

* Seed processes: any event whose ``Image`` or ``CommandLine`` matches the regex
  (case-insensitive, ``re.search``) seeds its ``ProcessGuid``; ``SourceImage`` seeds
  ``SourceProcessGuid`` (e.g. ProcessAccess by the payload) and ``ParentImage`` /
  ``ParentCommandLine`` seed ``ParentProcessGuid`` (the payload's own creation event may lie
  outside the capture). Those matching events are labelled themselves.
* Expansion: descendants through ``ParentProcessGuid -> ProcessGuid`` edges of process-creation
  events only (EventID 1), iterated to a fixed point, so the order of events does not matter
  (a child may come before its parent in the stream).
* Membership: an event is labelled when its ProcessGuid, ParentProcessGuid, SourceProcessGuid or
  TargetProcessGuid is in the tree. Source/Target GUIDs only decide membership, never expansion:
  the dump's ProcessAccess has lsass as its target, and lsass's own children are not the attack.

Field names are matched case-insensitively (``SourceProcessGUID`` and ``SourceProcessGuid`` both
occur in the wild); GUID values are compared lower-cased without braces or whitespace.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from plugin.detect.lineage import guid

__all__ = ["LabelEvent", "attack_tree_labels"]

_GUID_FIELDS = ("processguid", "parentprocessguid", "sourceprocessguid", "targetprocessguid")
# (field whose text is matched against the seed, GUID field it seeds)
_SEED_FIELDS = (
    ("image", "processguid"),
    ("commandline", "processguid"),
    ("sourceimage", "sourceprocessguid"),
    ("parentimage", "parentprocessguid"),
    ("parentcommandline", "parentprocessguid"),
)


@dataclass
class LabelEvent:
    """One event as the labeller sees it.

    ``fields`` is the parsed Sysmon EventData (field names in any case). ``event_id`` is optional:
    when it is None, the EventID is taken from an ``EventID`` field if present, else an event
    carrying both ProcessGuid and ParentProcessGuid is treated as a process creation (only
    EventID 1 has ParentProcessGuid).
    """

    key: str
    fields: dict
    event_id: int | None = field(default=None)


def _lower_keys(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in fields.items()}


def _event_id(ev: LabelEvent, low: Mapping[str, Any]) -> int | None:
    if ev.event_id is not None:
        return int(ev.event_id)
    raw = low.get("eventid")
    if raw is None:
        return None
    try:
        return int(str(raw).strip())
    except ValueError:
        return None


def attack_tree_labels(events: Sequence[LabelEvent], seed: str) -> set[str]:
    """Keys of the events in the attack tree grown from processes matching ``seed``.

    See the module docstring for the exact rules. Raises ``re.error`` for an invalid regex (a
    usage error the CLI reports); an empty result is a valid answer.
    """
    pattern = re.compile(seed, re.IGNORECASE)
    lowered = [_lower_keys(ev.fields or {}) for ev in events]

    seeds: set[str] = set()
    labels: set[str] = set()
    children: dict[str, set[str]] = defaultdict(set)
    for ev, low in zip(events, lowered):
        for text_field, guid_field in _SEED_FIELDS:
            value = low.get(text_field)
            if value is None or not pattern.search(str(value)):
                continue
            labels.add(ev.key)
            g = guid(low.get(guid_field))
            if g is not None:
                seeds.add(g)
        eid = _event_id(ev, low)
        is_creation = eid == 1 or (eid is None and "processguid" in low and "parentprocessguid" in low)
        if is_creation:
            parent = guid(low.get("parentprocessguid"))
            child = guid(low.get("processguid"))
            if parent is not None and child is not None:
                children[parent].add(child)

    tree = set(seeds)
    frontier = list(seeds)
    while frontier:  # fixed point over the whole edge set: order of events is irrelevant
        g = frontier.pop()
        for child in children.get(g, ()):
            if child not in tree:
                tree.add(child)
                frontier.append(child)

    for ev, low in zip(events, lowered):
        if ev.key in labels:
            continue
        for name in _GUID_FIELDS:
            g = guid(low.get(name))
            if g is not None and g in tree:
                labels.add(ev.key)
                break
    return labels
