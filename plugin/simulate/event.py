"""The shape-independent simulated event and its side label.

Why a module of its own: every other part of the simulator either makes `SimEvent`s (the fleet,
the scenarios) or consumes them (the renderers); keeping the type here lets both sides depend on it
without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["LABEL_KEY", "NORMAL", "NOVEL", "SimEvent", "label"]

LABEL_KEY = "sysmon_blt_sim"
NORMAL = "normal"
NOVEL = "novel"


@dataclass(slots=True)
class SimEvent:
    """One simulated Sysmon event, independent of any shape.

    `fields` holds the EventData fields as Sysmon renders them (all strings, Sysmon's order);
    `label` is the side label (`anomaly`, `scenario`, `span`).
    """

    event_id: int
    computer: str
    channel: str
    record_id: int
    utc_time: datetime
    fields: dict[str, str]
    label: dict[str, Any]
    sysmon_pid: int = 2284
    host_ip: str = "10.10.0.10"


def label(scenario: str = NORMAL, span: str | None = None) -> dict[str, Any]:
    """The side label of an event: anomalous unless `normal` or `novel` (never-seen benign)."""
    return {"anomaly": scenario not in (NORMAL, NOVEL), "scenario": scenario, "span": span}
