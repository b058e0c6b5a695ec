"""Retention: events older than a cutoff leave, with what only they used (their scores, labels,
vectors no event or fit needs); fits, clusters, alerts, imports and the audit trail stay.

A mixin of the store (runs on ``self.con``), one transaction.
"""

from __future__ import annotations

from datetime import datetime


class RetentionQueries:
    def prune(self, before: datetime) -> dict[str, int]:
        """Delete events whose own time (else their import time) is before ``before``, their
        assignments and labels, dead letters from before it, and the vectors of texts no event
        and no fit's baseline uses any more. Returns how many rows of each left."""
        old = "coalesce(ts, imported_at) < ?"
        self.con.begin()
        try:
            counts = {
                "assignments": self._count_delete(
                    f"DELETE FROM assignments WHERE event_key IN (SELECT event_key FROM events WHERE {old})",
                    [before]),
                "labels": self._count_delete(
                    f"DELETE FROM labels WHERE event_key IN (SELECT event_key FROM events WHERE {old})",
                    [before]),
                "events": self._count_delete(f"DELETE FROM events WHERE {old}", [before]),
                "dead_letters": self._count_delete("DELETE FROM dead_letters WHERE \"at\" < ?", [before]),
            }
            counts["text_vectors"] = self._count_delete(
                "DELETE FROM text_vectors v WHERE NOT EXISTS (SELECT 1 FROM events e WHERE "
                "e.text_hash = v.text_hash) AND NOT EXISTS (SELECT 1 FROM baseline b WHERE "
                "b.text_hash = v.text_hash AND b.model = v.model)", [])
            self.con.commit()
        except Exception:
            self._rollback()
            raise
        return counts

    def _count_delete(self, sql: str, params: list) -> int:
        rows = self._run(sql, params)
        return int(rows[0][0]) if rows else 0
