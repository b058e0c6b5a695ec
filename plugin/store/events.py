"""Reading stored events back: in log order for the walks that need it (rescore, fit, eval),
process creations for lineage, nearest texts for enrichment.

A mixin of the store: it runs on ``self.con`` (the writer's connection) or, where a background
sink thread may be writing on that connection meanwhile, on a cursor of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import orjson
import pyarrow as pa

from plugin.normalize.normalizer import NormalizedEvent

#: the columns of a NormalizedEvent that are read back (the raw record stays in the database)
_READ_COLUMNS = ("event_key", "source", "position", "event_id", "computer", "user_name", "ts",
                 "record_id", "channel", "shape", "normalized", "text_hash", "fields")


def _guid_sql(column: str) -> str:
    """SQL spelling of one GUID form: no braces, lower case (as `plugin.detect.lineage.guid`)."""
    return f"lower(trim(trim(trim(json_extract_string(fields, '$.{column}')), '{{}}')))"


class EventQueries:
    def events_in_log_order(self, batch_size: int = 5000,
                            text_hashes: Sequence[str] | None = None) -> Iterator[list[NormalizedEvent]]:
        """Stored events in log order (time, then key), in lists of ``batch_size``, with their
        fields and without the raw record; only events of ``text_hashes`` when given. Streams from
        a cursor of its own, so writes meanwhile do not cut the read short."""
        cur = self.con.cursor()
        try:
            cols = ", ".join(f"e.{c}" for c in _READ_COLUMNS)
            if text_hashes is None:
                cur.execute(f"SELECT {cols} FROM events e ORDER BY e.ts, e.event_key")
            else:
                cur.register("_want_texts", pa.table({"text_hash": list(text_hashes)}))
                cur.execute(f"SELECT {cols} FROM events e JOIN _want_texts USING (text_hash) "
                            "ORDER BY e.ts, e.event_key")
            while rows := cur.fetchmany(batch_size):
                yield [NormalizedEvent(*r[:-1], fields=r[-1] or "", raw="") for r in rows]
        finally:
            cur.close()

    def events_lacking_vectors(self, model: str, version: str) -> int:
        """How many stored events have no vector of this model version (imported with another
        model, or with none)."""
        return int(self._run(
            "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM text_vectors v WHERE "
            "v.text_hash = e.text_hash AND v.model = ? AND v.model_version = ?)",
            [model, version])[0][0])

    def texts_by_hash(self, hashes: list[str]) -> dict[str, str]:
        """Canonical texts for text hashes (any one event carrying each), on a cursor of its own."""
        if not hashes:
            return {}
        cur = self.con.cursor()
        try:
            cur.register("_h", pa.table({"h": hashes}))
            rows = cur.execute("SELECT text_hash, any_value(normalized) FROM events JOIN _h ON "
                               "text_hash = h GROUP BY 1").fetchall()
        finally:
            cur.close()
        return dict(rows)

    def process_creation(self, guid: str) -> dict | None:
        """The stored creation (event 1) of the process with this GUID (no braces, lower case):
        event_key, ts, image, command_line, parent_guid (as stored, unnormalized); None if absent."""
        rows = self._run(
            "SELECT event_key, ts, json_extract_string(fields, '$.Image'), "
            "json_extract_string(fields, '$.CommandLine'), "
            "json_extract_string(fields, '$.ParentProcessGuid') "
            f"FROM events WHERE event_id = 1 AND {_guid_sql('ProcessGuid')} = ? LIMIT 1", [guid])
        if not rows:
            return None
        key, ts, image, cmd, parent = rows[0]
        return {"event_key": key, "ts": ts, "image": image, "command_line": cmd, "parent": parent}

    def nearest_events(self, model: str, version: str, vector: np.ndarray, k: int = 5,
                       exclude_event: str | None = None) -> list[dict]:
        """The ``k`` stored texts most similar to ``vector`` (exact cosine: fast enough for an
        analyst's request), one event each (the first seen): event_key, computer, ts,
        similarity, normalized. ``exclude_event``: the event being enriched, which is not its
        own neighbour (its text still is, through its twins, when other events carry it)."""
        rows = self._run(
            """
            WITH top AS (
                SELECT text_hash, list_cosine_similarity(vector, ?::FLOAT[]) AS sim
                FROM text_vectors WHERE model = ? AND model_version = ?
                ORDER BY sim DESC LIMIT ?
            )
            SELECT arg_min(e.event_key, e.ts), arg_min(e.computer, e.ts), min(e.ts),
                   any_value(e.normalized), max(top.sim)
            FROM top JOIN events e USING (text_hash)
            WHERE e.event_key IS DISTINCT FROM ?
            GROUP BY top.text_hash ORDER BY max(top.sim) DESC LIMIT ?
            """, [vector.astype(np.float32).tolist(), model, version, k + 1, exclude_event, k])
        return [{"event_key": r[0], "computer": r[1], "ts": r[2].isoformat() if r[2] else None,
                 "similarity": round(float(r[4]), 6), "normalized": r[3]} for r in rows]

    def assignment_details(self, model: str, event_keys: Sequence[str]) -> list[dict]:
        """The stored score details (``assignments.detail``) of these events for one model."""
        if not event_keys:
            return []
        rows = self._run(
            "SELECT detail FROM assignments WHERE model = ? AND event_key IN (SELECT unnest(?))",
            [model, list(event_keys)])
        return [orjson.loads(d) if d else {} for (d,) in rows]
