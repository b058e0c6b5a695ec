"""The triage page's questions, as a mixin of the store (runs on ``self.con``).

Why apart from `alerts.py` and `incidents.py`: those serve the command line and the sink; the
page filters both lists by the same host, time range, status and event type, shows one incident
whole, and counts an alert's twins per host. Every filter is a bound parameter; the SQL text
never depends on what a request carried, only on which filters it used.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

__all__ = ["IncidentNotFound", "TriageFilter", "TriageQueries"]

_ALERT_COLUMNS = ("alert_id", "model", "score", "status", "count", "first_seen", "last_seen",
                  "event_key", "computer", "event_id", "normalized")
_ALERT_SELECT = ("SELECT a.alert_id, a.model, a.score, a.status, a.count, a.first_seen, "
                 "a.last_seen, a.event_key, e.computer, e.event_id, e.normalized "
                 "FROM alerts a LEFT JOIN events e USING (event_key)")
_INCIDENT_COLUMNS = ("incident_id", "model", "computer", "root_guid", "root_image", "first_seen",
                     "last_seen", "events", "outliers", "alerts", "score", "status",
                     "event_types")


class IncidentNotFound(LookupError):
    """No incident has that id (or the prefix names several)."""


class TriageFilter(TypedDict, total=False):
    """What the page filters by; a key absent or None filters nothing. ``since`` / ``until``
    keep what was seen in the range (first..last seen overlaps it), so an alert that began
    before ``since`` and is still firing stays in view."""

    host: str | None  # the computer name, case-insensitively
    since: datetime | None
    until: datetime | None
    status: str | None
    event_id: int | None


def _where(f: TriageFilter, *, host: str, first: str, last: str,
           status: str) -> tuple[list[str], list]:
    """The shared filter clauses over the given column names, with their parameters."""
    where: list[str] = []
    params: list[Any] = []
    if f.get("host"):
        where.append(f"lower({host}) = lower(?)")
        params.append(f["host"])
    if f.get("since") is not None:
        where.append(f"{last} >= ?")
        params.append(f["since"])
    if f.get("until") is not None:
        where.append(f"{first} <= ?")
        params.append(f["until"])
    if f.get("status"):
        where.append(f"{status} = ?")
        params.append(f["status"])
    return where, params


class TriageQueries:
    def triage_alerts(self, f: TriageFilter | None = None, *, outside_incidents: bool = True,
                      top: int | None = 200) -> list[dict[str, Any]]:
        """Alerts, highest score first, filtered (see `TriageFilter`); by default only those
        no incident holds, which the page lists under the incidents."""
        f = f or {}
        where, params = _where(f, host="e.computer", first="a.first_seen", last="a.last_seen",
                               status="a.status")
        if f.get("event_id") is not None:
            where.append("e.event_id = ?")
            params.append(int(f["event_id"]))
        if outside_incidents and self.has_table("incident_alerts"):
            where.append("NOT EXISTS (SELECT 1 FROM incident_alerts l JOIN incidents i "
                         "USING (incident_id) WHERE l.alert_id = a.alert_id AND i.events > 0)")
        sql = (_ALERT_SELECT + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY a.score DESC, a.alert_id")
        if top:
            sql += " LIMIT ?"
            params.append(int(top))
        return [dict(zip(_ALERT_COLUMNS, r)) for r in self._run(sql, params)]

    def triage_incidents(self, f: TriageFilter | None = None, *,
                         top: int | None = 100) -> list[dict[str, Any]]:
        """Incidents, highest ranking score first, filtered (see `TriageFilter`; ``event_id``
        keeps those whose tree logged that event type)."""
        if not self.has_table("incidents"):  # a read-only open of a file from before them
            return []
        f = f or {}
        where, params = _where(f, host="computer", first="first_seen", last="last_seen",
                               status="status")
        where.insert(0, "events > 0")
        if f.get("event_id") is not None:
            where.append("list_contains(event_types, ?)")
            params.append(int(f["event_id"]))
        sql = (f"SELECT {', '.join(_INCIDENT_COLUMNS)} FROM incidents "
               f"WHERE {' AND '.join(where)} ORDER BY score DESC, incident_id")
        if top:
            sql += " LIMIT ?"
            params.append(int(top))
        return [dict(zip(_INCIDENT_COLUMNS, r)) for r in self._run(sql, params)]

    def incident(self, incident_id: str, *, max_events: int = 500) -> dict[str, Any]:
        """One incident whole: its row, its alerts (highest score first), the events of its
        tree in time order (at most ``max_events``, each with its score and outlier flag) and
        the history of its status.
        ``incident_id`` may be a unique prefix, as an alert id may."""
        if not self.has_table("incidents"):
            raise IncidentNotFound(f"no incident with id {incident_id!r}")
        rows = self._run(f"SELECT {', '.join(_INCIDENT_COLUMNS)} FROM incidents "
                         "WHERE starts_with(incident_id, ?) AND events > 0 LIMIT 2",
                         [incident_id.strip().lower()])
        if len(rows) != 1:
            raise IncidentNotFound(f"incident id {incident_id!r} is ambiguous: type more of it"
                                   if rows else f"no incident with id {incident_id!r}")
        out = dict(zip(_INCIDENT_COLUMNS, rows[0]))
        full, model = out["incident_id"], out["model"]
        out["alert_rows"] = [dict(zip(_ALERT_COLUMNS, r)) for r in self._run(
            _ALERT_SELECT + " JOIN incident_alerts l USING (alert_id) WHERE l.incident_id = ? "
            "ORDER BY a.score DESC, a.alert_id", [full])]
        out["event_rows"] = [dict(zip(("event_key", "ts", "event_id", "normalized", "score",
                                       "is_outlier"), r)) for r in self._run(
            "SELECT e.event_key, e.ts, e.event_id, e.normalized, s.score, s.is_outlier "
            "FROM assignments s JOIN events e USING (event_key) "
            "WHERE s.incident_id = ? AND s.model = ? ORDER BY e.ts, e.event_key LIMIT ?",
            [full, model, int(max_events)])]
        out["history"] = self.incident_history(full)
        return out

    def alert_hosts(self, alert_id: str) -> list[dict[str, Any]]:
        """Where an alert's text was seen: per host, its events carrying the same canonical text
        and their first and last time (most events first). An alert folds its twins into one
        count; this says whether they sit on one host or on fifty."""
        full = self.resolve_alert_id(alert_id)
        rows = self._run(
            "SELECT e.computer, count(*), min(e.ts), max(e.ts) FROM events e "
            "WHERE e.text_hash = (SELECT f.text_hash FROM alerts a JOIN events f "
            "USING (event_key) WHERE a.alert_id = ?) GROUP BY 1 ORDER BY 2 DESC, 1", [full])
        return [dict(zip(("computer", "events", "first_seen", "last_seen"), r)) for r in rows]
