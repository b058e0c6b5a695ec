"""Triage: alerts listed, shown and marked, each status change kept with who, when and why.

A mixin of the store (runs on ``self.con``). An alert is named by its id or by a unique prefix of
it (as a commit is), so an analyst can type the first characters the list shows.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

STATUSES = ("open", "suppressed", "false_positive")

_LIST_COLUMNS = ("alert_id", "model", "score", "status", "count", "first_seen", "last_seen",
                 "event_key", "computer", "event_id", "normalized")
#: an alert with its first event's host and text, as `list_alerts` and `alert` select it
_LIST_SELECT = ("SELECT a.alert_id, a.model, a.score, a.status, a.count, a.first_seen, "
                "a.last_seen, a.event_key, e.computer, e.event_id, e.normalized")


class AlertNotFound(LookupError):
    """No alert has that id (or the prefix names several)."""


class AlertQueries:
    def list_alerts(self, *, status: str | None = None, host: str | None = None,
                    since: datetime | None = None, top: int | None = 20) -> list[dict[str, Any]]:
        """Alerts, highest score first, with their first event's host and text and the
        incidents their events belong to. ``host`` matches the computer name
        case-insensitively, ``since`` the last time it was seen."""
        where, params = [], []
        if status:
            where.append("a.status = ?")
            params.append(status)
        if host:
            where.append("lower(e.computer) = lower(?)")
            params.append(host)
        if since:
            where.append("a.last_seen >= ?")
            params.append(since)
        sql = (_LIST_SELECT + " FROM alerts a LEFT JOIN events e USING (event_key)"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY a.score DESC, a.alert_id")
        if top:
            sql += " LIMIT ?"
            params.append(int(top))
        rows = [dict(zip(_LIST_COLUMNS, r)) for r in self._run(sql, params)]
        incidents = self.incidents_of_alerts([r["alert_id"] for r in rows])
        for r in rows:
            r["incident_ids"] = incidents.get(r["alert_id"], [])
        return rows

    def alert_states(self, alert_ids: list[str]) -> dict[str, tuple[str, datetime]]:
        """(status, last_seen) of those of these alerts the store holds; on a cursor of its own
        (a stage asks while the sink thread writes)."""
        if not alert_ids:
            return {}
        cur = self.con.cursor()
        try:
            rows = cur.execute("SELECT alert_id, status, last_seen FROM alerts WHERE alert_id IN "
                               "(SELECT unnest(?))", [list(alert_ids)]).fetchall()
        finally:
            cur.close()
        return {r[0]: (r[1], r[2]) for r in rows}

    def reset_alert_counts(self, models: list[str]) -> None:
        """Zero these models' alert counts and scores before a rescore folds every stored
        outlier in again (statuses, notes and first/last seen stay), as `reset_incidents` does
        for incidents: an alert's score is then its highest under the current scores, not
        under an older fit's or a cold start's first walk; one left at 0 has no outlier now."""
        if models:
            self._run("UPDATE alerts SET count = 0, score = 0 WHERE model IN (SELECT unnest(?))",
                      [models])

    def drop_unconfirmed_alerts(self, models: list[str]) -> int:
        """Delete these models' alerts that hold no outlier now (count 0), are still open and
        nobody ever marked: a cold start's first walk opened them, its settled walk over the
        whole case did not confirm them (`plugin.pipeline.settle`), and nobody saw them. An
        alert someone acted on stays, at 0, with its history. Returns how many went."""
        if not models:
            return 0
        where = ("model IN (SELECT unnest(?)) AND count = 0 AND status = 'open' AND alert_id NOT "
                 "IN (SELECT alert_id FROM alert_changes)")
        n = int(self._run(f"SELECT count(*) FROM alerts WHERE {where}", [models])[0][0])
        if n:
            self._run(f"DELETE FROM alerts WHERE {where}", [models])
        return n

    def alert_count(self, status: str | None = None) -> int:
        if status:
            return int(self._run("SELECT count(*) FROM alerts WHERE status = ?", [status])[0][0])
        return int(self._run("SELECT count(*) FROM alerts")[0][0])

    def resolve_alert_id(self, prefix: str) -> str:
        """The full id of the alert ``prefix`` names; AlertNotFound when none or several do."""
        rows = self._run("SELECT alert_id FROM alerts WHERE starts_with(alert_id, ?) LIMIT 2",
                         [prefix.strip().lower()])
        if not rows:
            raise AlertNotFound(f"no alert with id {prefix!r}")
        if len(rows) > 1:
            raise AlertNotFound(f"alert id {prefix!r} is ambiguous: type more of it")
        return rows[0][0]

    def alert(self, alert_id: str) -> dict[str, Any]:
        """One alert whole: its row, first event (with fields and the raw record), the stored
        score detail and explanation (decoded), the incidents its events belong to, and the
        history of its status."""
        full = self.resolve_alert_id(alert_id)
        row = self._run(
            _LIST_SELECT + ", e.ts, e.source, e.position, e.fields, e.raw, s.detail, "
            "s.explanation FROM alerts a "
            "LEFT JOIN events e USING (event_key) "
            "LEFT JOIN assignments s ON s.event_key = a.event_key AND s.model = a.model "
            "WHERE a.alert_id = ?", [full])[0]
        out = dict(zip(_LIST_COLUMNS, row[:11]))
        out.update(ts=row[11], source=row[12], position=row[13],
                   fields=json.loads(row[14]) if row[14] else {}, raw=row[15],
                   detail=json.loads(row[16]) if row[16] else {},
                   explanation=json.loads(row[17]) if row[17] else None,
                   incident_ids=self.incidents_of_alerts([full]).get(full, []))
        out["history"] = [dict(zip(("status", "note", "analyst", "at"), r)) for r in self._run(
            "SELECT status, note, analyst, changed_at FROM alert_changes WHERE alert_id = ? "
            "ORDER BY changed_at",
            [full])] if self.has_table("alert_changes") else []  # read-only opens do not migrate
        return out

    def mark_alert(self, alert_id: str, status: str, note: str | None, analyst: str) -> dict[str, Any]:
        """Set an alert's status and keep the change (who, when, why); returns the change."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        full = self.resolve_alert_id(alert_id)
        at = datetime.now(timezone.utc)
        self.con.begin()
        try:
            before = self._change_alerts([full], status, note, analyst, at)[full]
            self.con.commit()
        except Exception:
            self._rollback()
            raise
        return {"alert_id": full, "status": status, "previous_status": before, "note": note,
                "analyst": analyst, "at": at.isoformat()}

    def _change_alerts(self, alert_ids: list[str], status: str, note: str | None, analyst: str,
                       at: datetime) -> dict[str, str]:
        """Inside the caller's transaction: set these alerts' status and keep one change row
        each. One path for an alert marked alone and for the alerts of a marked incident, so
        the audit trail and what stops their twins from alerting (`alerts.status`, read by the
        publisher) cannot drift apart. Returns each stored alert's previous status (ids the
        store does not hold are left out)."""
        before = dict(self._run("SELECT alert_id, status FROM alerts WHERE alert_id IN "
                                "(SELECT unnest(?))", [list(alert_ids)]))
        if not before:
            return {}
        ids = sorted(before)
        self._run("UPDATE alerts SET status = ? WHERE alert_id IN (SELECT unnest(?))",
                  [status, ids])
        self._run("INSERT INTO alert_changes SELECT unnest(?), ?, ?, ?, ?",
                  [ids, status, note, analyst, at])
        return before
