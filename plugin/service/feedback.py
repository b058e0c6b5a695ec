"""An analyst's verdict on an alert or an incident, from the JSON API (`POST /feedback`) or the
page's buttons.

One function per target for both, so a verdict given on the page is kept exactly as one sent by a
SOAR playbook: the same status check, the same `Store.mark_alert` (status plus an `alert_changes`
row with who, when and why) or `Store.mark_incident` (the incident's status and each of its
alerts' through that same path), the same log line.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from plugin.store import STATUSES, Store

log = structlog.get_logger(__name__)

MAX_NOTE = 2000
MAX_ANALYST = 100


class BadVerdict(ValueError):
    """A status the store does not know, or a note or analyst name too long to keep."""


def _check(status: str, note: str | None, analyst: str) -> None:
    if status not in STATUSES:
        raise BadVerdict(f"status must be one of {', '.join(STATUSES)}")
    if note is not None and len(note) > MAX_NOTE:
        raise BadVerdict(f"note is longer than {MAX_NOTE} characters")
    if len(analyst) > MAX_ANALYST:
        raise BadVerdict(f"analyst is longer than {MAX_ANALYST} characters")


def mark(store: Store, lock: threading.Lock, alert_id: str, status: str, note: str | None,
         analyst: str, via: str) -> dict[str, Any]:
    """Mark the alert (an id or unique prefix); AlertNotFound when none, BadVerdict when the
    verdict cannot be kept. ``lock``: the service's one store connection serves one request at
    a time."""
    _check(status, note, analyst)
    with lock:
        change = store.mark_alert(alert_id, status, note, analyst)
    log.info("alert_marked", alert_id=change["alert_id"], status=status,
             previous=change["previous_status"], analyst=analyst, via=via)
    return change


def mark_incident(store: Store, lock: threading.Lock, incident_id: str, status: str,
                  note: str | None, analyst: str, via: str) -> dict[str, Any]:
    """Mark the incident (an id or unique prefix) and every alert it holds; IncidentNotFound
    when none, BadVerdict as for an alert."""
    _check(status, note, analyst)
    with lock:
        change = store.mark_incident(incident_id, status, note, analyst)
    log.info("incident_marked", incident_id=change["incident_id"], status=status,
             previous=change["previous_status"], alerts=len(change["alerts"]), analyst=analyst,
             via=via)
    return change
