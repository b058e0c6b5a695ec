"""Incidents: written with their batch, listed for triage, reset before a rescore rebuilds them.

A mixin of the store (runs on ``self.con``). The incident stage (`plugin.pipeline.incidents`)
hands one row per incident that grew; the counts stored are not its running totals but what this
write changed, so a replay (the same events written again after a crash) counts nothing twice:

* an event of this batch counts when the batch stored it new (``INSERT OR IGNORE ... RETURNING``
  on `events`; every event when the batch writes no events, as `rescore` does after resetting);
* an event of an earlier batch that joined now (``linked_before``) counts when its stored
  assignment had no incident yet (``UPDATE ... WHERE incident_id IS NULL RETURNING``);
* alerts are distinct (incident, alert) pairs in `incident_alerts`, inserted or ignored.

The ranking score, time bounds, texts and event types merge (greatest, least, union), so a
consumer restarted without its in-memory trees never lowers what an earlier run stored. The
sink never writes an existing incident's status: an analyst's verdict (`mark_incident`) stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from plugin.store.alerts import STATUSES
from plugin.store.triage import IncidentNotFound

MAX_TEXTS = 10

_INCIDENT_COLUMNS = ("incident_id", "model", "computer", "root_guid", "root_image", "first_seen",
                     "last_seen", "events", "outliers", "alerts", "score", "status", "texts",
                     "event_types", "root_novel")
_TS = pa.timestamp("us", tz="UTC")


class IncidentQueries:
    # -- the sink ----------------------------------------------------------------------------
    def _write_incidents(self, rows: Sequence[dict], assignments: Sequence[dict],
                         inserted: set[str] | None) -> None:
        """Inside `write_batch`'s transaction, after the batch's assignments are upserted.
        ``inserted``: the keys of the events this batch stored new (None: the batch stores no
        events, and every linked assignment counts)."""
        if not rows:
            return
        grew = {r["incident_id"]: [0, 0] for r in rows}  # events, outliers newly linked
        for a in assignments:
            iid = a.get("incident_id")
            if iid in grew and (inserted is None or a["event_key"] in inserted):
                grew[iid][0] += 1
                grew[iid][1] += bool(a["is_outlier"])
        before = [(k, r["incident_id"], r["model"])
                  for r in rows for k in r.get("linked_before", ())]
        if before:
            self.con.register("_incident_links", pa.table({
                "event_key": [k for k, _, _ in before], "incident_id": [i for _, i, _ in before],
                "model": [m for _, _, m in before]}))
            changed = self._link_returning("_incident_links")
            self.con.unregister("_incident_links")
            for iid, is_outlier in changed:
                grew[iid][0] += 1
                grew[iid][1] += bool(is_outlier)
        pairs = sorted({(r["incident_id"], a) for r in rows for a in r.get("alert_ids", ())})
        if pairs:
            self.con.register("_incident_alerts", pa.table({
                "incident_id": [i for i, _ in pairs], "alert_id": [a for _, a in pairs]}))
            self._insert_new("incident_alerts", "SELECT incident_id, alert_id FROM _incident_alerts",
                             ("incident_id", "alert_id"))
            self.con.unregister("_incident_alerts")
        now = datetime.now(timezone.utc)
        self.con.register("_incidents", pa.table({
            "incident_id": [r["incident_id"] for r in rows],
            "model": [r["model"] for r in rows],
            "computer": [r["computer"] for r in rows],
            "root_guid": [r["root_guid"] for r in rows],
            "root_image": [r["root_image"] for r in rows],
            "first_seen": pa.array([r["first_seen"] for r in rows], _TS),
            "last_seen": pa.array([r["last_seen"] for r in rows], _TS),
            "events": [grew[r["incident_id"]][0] for r in rows],
            "outliers": [grew[r["incident_id"]][1] for r in rows],
            "score": [float(r["score"]) for r in rows],
            "status": [r.get("status") or "open" for r in rows],
            "texts": pa.array([list(r["texts"])[:MAX_TEXTS] for r in rows], pa.list_(pa.string())),
            "event_types": pa.array([list(r["event_types"]) for r in rows], pa.list_(pa.int32())),
            "root_novel": [int(r["root_novel"]) for r in rows],
        }))
        self._upsert(
            "incidents", "SELECT *, 0 AS alerts, ?::TIMESTAMPTZ AS created, "
            "?::TIMESTAMPTZ AS updated FROM _incidents", ("incident_id",), [
                "events = incidents.events + {new}.events",
                "outliers = incidents.outliers + {new}.outliers",
                "root_image = coalesce(incidents.root_image, {new}.root_image)",
                "first_seen = least(incidents.first_seen, {new}.first_seen)",
                "last_seen = greatest(incidents.last_seen, {new}.last_seen)",
                "score = greatest(incidents.score, {new}.score)",
                "root_novel = greatest(incidents.root_novel, {new}.root_novel)",
                "event_types = list_sort(list_distinct(list_concat(incidents.event_types, "
                "{new}.event_types)))",
                "texts = list_concat(incidents.texts, list_filter({new}.texts, "
                f"lambda t: NOT list_contains(incidents.texts, t)))[1:{MAX_TEXTS}]",
                "updated = {new}.updated"], [now, now])
        self.con.unregister("_incidents")
        self._run("UPDATE incidents SET alerts = (SELECT count(*) FROM incident_alerts l "
                  "WHERE l.incident_id = incidents.incident_id) "
                  "WHERE incident_id IN (SELECT unnest(?))", [sorted(grew)])

    # -- rescore -----------------------------------------------------------------------------
    def reset_incidents(self, models: list[str]) -> None:
        """Empty these models' incidents before a rescore rebuilds them: assignments unlinked,
        counts, bounds, texts and scores cleared; ids and statuses stay (an incident that forms
        again under the new scores keeps an analyst's verdict), and one left at 0 events holds
        no outlier under the current fit."""
        if not models:
            return
        self.con.begin()
        try:
            self._run("UPDATE assignments SET incident_id = NULL WHERE incident_id IS NOT NULL "
                      "AND model IN (SELECT unnest(?))", [models])
            self._run("DELETE FROM incident_alerts WHERE incident_id IN (SELECT incident_id FROM "
                      "incidents WHERE model IN (SELECT unnest(?)))", [models])
            self._run("UPDATE incidents SET events = 0, outliers = 0, alerts = 0, score = 0, "
                      "first_seen = NULL, last_seen = NULL, texts = [], event_types = [], "
                      "root_novel = 0 WHERE model IN (SELECT unnest(?))", [models])
            self.con.commit()
        except Exception:
            self._rollback()
            raise

    # -- triage ------------------------------------------------------------------------------
    def list_incidents(self, *, top: int | None = 20, host: str | None = None,
                       status: str | None = None) -> list[dict[str, Any]]:
        """Incidents, highest ranking score first (those emptied by a rescore left out)."""
        if not self.has_table("incidents"):  # a read-only open of a file from before them
            return []
        where, params = ["events > 0"], []
        if host:
            where.append("lower(computer) = lower(?)")
            params.append(host)
        if status:
            where.append("status = ?")
            params.append(status)
        sql = (f"SELECT {', '.join(_INCIDENT_COLUMNS)} FROM incidents WHERE {' AND '.join(where)} "
               "ORDER BY score DESC, incident_id")
        if top:
            sql += " LIMIT ?"
            params.append(int(top))
        return [dict(zip(_INCIDENT_COLUMNS, r)) for r in self._run(sql, params)]

    def incident_count(self) -> int:
        if not self.has_table("incidents"):
            return 0
        return int(self._run("SELECT count(*) FROM incidents WHERE events > 0")[0][0])

    def resolve_incident_id(self, prefix: str) -> str:
        """The full id of the incident ``prefix`` names, as an alert id prefix names its alert;
        IncidentNotFound when none or several do. Incidents a rescore emptied count too: their
        id and verdict stay for when they form again."""
        if not self.has_table("incidents"):
            raise IncidentNotFound(f"no incident with id {prefix!r}")
        rows = self._run("SELECT incident_id FROM incidents WHERE starts_with(incident_id, ?) "
                         "LIMIT 2", [prefix.strip().lower()])
        if not rows:
            raise IncidentNotFound(f"no incident with id {prefix!r}")
        if len(rows) > 1:
            raise IncidentNotFound(f"incident id {prefix!r} is ambiguous: type more of it")
        return rows[0][0]

    def mark_incident(self, incident_id: str, status: str, note: str | None,
                      analyst: str) -> dict[str, Any]:
        """Give an incident a verdict and every alert it holds the same one, in one transaction:
        the analyst judged the story, and each of its alerts would otherwise keep firing (its
        twins alert while its own status is open). Each alert's change is kept as marking it
        alone keeps it (`alert_changes`, the same path), with a note naming the incident; the
        incident's own change goes to `incident_changes`. Returns the change."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        full = self.resolve_incident_id(incident_id)
        at = datetime.now(timezone.utc)
        alert_note = f"via incident {full}" + (f": {note}" if note else "")
        self.con.begin()
        try:
            before = self._run("SELECT status FROM incidents WHERE incident_id = ?", [full])[0][0]
            self._run("UPDATE incidents SET status = ? WHERE incident_id = ?", [status, full])
            alert_ids = [r[0] for r in self._run(
                "SELECT alert_id FROM incident_alerts WHERE incident_id = ? ORDER BY alert_id",
                [full])]
            alerts = self._change_alerts(alert_ids, status, alert_note, analyst, at)
            self._run("INSERT INTO incident_changes VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [full, status, before, note, analyst, len(alerts), at])
            self.con.commit()
        except Exception:
            self._rollback()
            raise
        return {"incident_id": full, "status": status, "previous_status": before, "note": note,
                "analyst": analyst, "at": at.isoformat(),
                "alerts": [{"alert_id": a, "previous_status": alerts[a]} for a in sorted(alerts)]}

    def incident_history(self, incident_id: str) -> list[dict[str, Any]]:
        """An incident's status changes, oldest first (none in a file opened read-only from
        before migration 8)."""
        if not self.has_table("incident_changes"):
            return []
        return [dict(zip(("status", "previous_status", "note", "analyst", "alerts", "at"), r))
                for r in self._run("SELECT status, previous, note, analyst, alerts, changed_at "
                                   "FROM incident_changes WHERE incident_id = ? "
                                   "ORDER BY changed_at", [incident_id])]

    def incidents_of_alerts(self, alert_ids: Sequence[str]) -> dict[str, list[str]]:
        """The incidents each alert's events belong to, by alert id (ranked, best first)."""
        if not alert_ids or not self.has_table("incident_alerts"):
            return {}
        rows = self._run(
            "SELECT l.alert_id, list(l.incident_id ORDER BY i.score DESC, l.incident_id) "
            "FROM incident_alerts l JOIN incidents i USING (incident_id) "
            "WHERE i.events > 0 AND l.alert_id IN (SELECT unnest(?)) GROUP BY 1",
            [list(alert_ids)])
        return {a: list(ids) for a, ids in rows}
