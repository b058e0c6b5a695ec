"""Reading stored events back: in log order for the walks that need it (rescore, fit, eval),
process creations for lineage, nearest texts for enrichment.

A mixin of the store: it runs on ``self.con`` (the writer's connection) or, where a background
sink thread may be writing on that connection meanwhile, on a cursor of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from plugin.normalize.normalizer import NormalizedEvent

#: how far from an event's time a lookup of its key reads: the key reads the time to the
#: millisecond (`plugin.normalize.event.event_key`), the stored ``ts`` may be finer
KEY_TIME_SLACK = timedelta(milliseconds=1)


def key_time_filter(column: str, lo: datetime | None,
                    hi: datetime | None = None) -> tuple[str, list]:
    """Where a stored event of key time ``lo`` (.. ``hi``) can be: an event's key derives from
    its own time (`plugin.normalize.event.event_key`) and `events` has no key index, so a key
    lookup reads only ``column`` in that range (zone maps skip the rest), and for an event
    without a time only rows without one. (SQL condition, its parameters.)"""
    if lo is None:
        return f"{column} IS NULL", []
    return f"{column} BETWEEN ? AND ?", [lo - KEY_TIME_SLACK, (hi or lo) + KEY_TIME_SLACK]

#: the columns of a NormalizedEvent that are read back (the raw record stays in the database)
_READ_COLUMNS = ("event_key", "source", "position", "event_id", "computer", "user_name", "ts",
                 "record_id", "channel", "shape", "normalized", "text_hash", "fields")

#: how the reader selects them: ``ts`` as its UTC wall time, made aware in Python. DuckDB hands
#: a TIMESTAMPTZ to Python through pytz, 2.8 us an event (0.42 s of the 0.83 s that reading
#: LSASS captures 01-04's 150,409 events back took, once per rescore and again per settle pass)
_READ_SELECT = ", ".join("timezone('UTC', e.ts)" if c == "ts" else f"e.{c}" for c in _READ_COLUMNS)
_TS = _READ_COLUMNS.index("ts")

#: the order events arrived in (see `EventQueries.events_in_log_order`)
_LOG_ORDER = "ORDER BY e.imported_at, e.source, e.position"


def arrival_ranges(arrivals: Sequence[tuple[Any, int]], size: int) -> Iterator[tuple[Any, Any]]:
    """(first, last) ``imported_at`` of consecutive arrival batches, each range holding at least
    ``size`` events (the last one what is left); ``arrivals``: (imported_at, events) in order."""
    first, held = None, 0
    for at, n in arrivals:
        if first is None:
            first = at
        held += n
        if held >= size:
            yield first, at
            first, held = None, 0
    if first is not None:
        yield first, arrivals[-1][0]


def _guid_sql(column: str) -> str:
    """SQL spelling of one GUID form: no braces, lower case (as `plugin.detect.lineage.guid`)."""
    return f"lower(trim(trim(trim(json_extract_string(fields, '$.{column}')), '{{}}')))"


#: what `process_creation` and `creations_after` read of a process creation, in this order
_CREATION_COLUMNS = ("event_key, ts, json_extract_string(fields, '$.Image'), "
                     "json_extract_string(fields, '$.CommandLine'), "
                     "json_extract_string(fields, '$.ParentProcessGuid')")


def _creation(row: Sequence[Any]) -> dict:
    key, ts, image, cmd, parent = row
    return {"event_key": key, "ts": ts, "image": image, "command_line": cmd, "parent": parent}


@dataclass(frozen=True)
class EnrichState:
    """What the enricher's in-memory copies need to know of the store before a request: row
    counts of `events` and `text_vectors` (in all, and above the last rowid each copy read), and
    whether the event being enriched is itself stored (then it is excluded from its neighbours,
    and an answer cached for its text without that exclusion does not apply)."""

    events: int
    events_above: int
    vectors: int
    vectors_above: int
    has_event: bool


@dataclass
class Appended:
    """What a table gained after a rowid, read in one snapshot: a reader that keeps a copy of
    some rows in memory (the enricher's neighbour and process indexes) adds these to it, and
    knows from the counts whether that is enough (``total == rows seen before + read``) or rows
    were deleted meanwhile (retention) and it must read the table again from ``after = -1``."""

    total: int  # rows in the table (every model), in that snapshot
    read: int  # rows with a rowid above ``after`` (every model), in that snapshot
    last_rowid: int  # the highest of them (``after`` when none)
    #: `text_vectors_after`: text hashes and their (rows, dim) float32 vectors;
    #: `creations_after`: (process GUID as `process_creation` takes it, creation) pairs
    hashes: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None
    creations: list[tuple[str, dict]] = field(default_factory=list)


def _read_event(row: tuple) -> NormalizedEvent:
    """A stored event as the reader selected it (``_READ_SELECT``), its time aware again."""
    ts = row[_TS]
    if ts is not None:
        row = (*row[:_TS], ts.replace(tzinfo=timezone.utc), *row[_TS + 1:])
    return NormalizedEvent(*row[:-1], fields=row[-1] or "", raw="")


class EventQueries:
    def events_in_log_order(self, batch_size: int = 5000,
                            text_hashes: Sequence[str] | None = None) -> Iterator[list[NormalizedEvent]]:
        """Stored events in log order, in lists of ``batch_size``, with their fields and without
        the raw record; only events of ``text_hashes`` when given. Streams from a cursor of its
        own, so writes meanwhile do not cut the read short.

        Log order is the order the store received them: batch by batch (``imported_at``), and in
        a batch each source's own order (a file's records, a partition's offsets), which is the
        order `import` and `consume` scored them in. Not the records' times: real captures tie
        (LSASS capture 01: 45,281 events, 2,060 distinct UtcTime values) and go back in time
        within a file (463 times there), and time-then-key put children before their parents
        (the lineage carried nothing; capture 01's cold start rescored at TPR 0.098 against
        0.271 on import).

        Read one arrival batch range at a time (``imported_at`` ranges of about ``batch_size``
        events, found by the table's zone maps), not as one sort of the whole table: that sort
        held DuckDB's whole 512 MB pool for the length of a rescore of the OTRF folder (595,618
        events, 233 MB spilled), and every write beside it crawled (4 s a batch)."""
        cur = self.con.cursor()
        try:
            join = ""
            if text_hashes is not None:
                cur.register("_want_texts", pa.table({"text_hash": list(text_hashes)}))
                join = "JOIN _want_texts USING (text_hash)"
            arrivals = cur.execute(f"SELECT e.imported_at, count(*) FROM events e {join} "
                                   "GROUP BY 1 ORDER BY 1").fetchall()
            for first, last in arrival_ranges(arrivals, batch_size):
                cur.execute(f"SELECT {_READ_SELECT} FROM events e {join} WHERE e.imported_at BETWEEN ? "
                            f"AND ? {_LOG_ORDER}", [first, last])
                while rows := cur.fetchmany(batch_size):
                    yield [_read_event(r) for r in rows]
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
            f"SELECT {_CREATION_COLUMNS} FROM events "
            f"WHERE event_id = 1 AND {_guid_sql('ProcessGuid')} = ? LIMIT 1", [guid])
        return _creation(rows[0]) if rows else None

    def nearest_events(self, model: str, version: str, vector: np.ndarray, k: int = 5,
                       exclude_event: str | None = None,
                       candidates: Sequence[str] | None = None) -> list[dict]:
        """The ``k`` stored texts most similar to ``vector`` (exact cosine: fast enough for an
        analyst's request), one event each (the first seen): event_key, computer, ts,
        similarity, normalized. ``exclude_event``: the event being enriched, which is not its
        own neighbour (its text still is, through its twins, when other events carry it).

        ``candidates``: text hashes known to hold the ``k + 1`` most similar (a shortlist from
        an in-memory copy of the vectors): the same answer, similarities computed here as
        without one, but no scan of every vector per request."""
        only = "" if candidates is None else "AND text_hash IN (SELECT unnest(?))"
        params: list[Any] = [vector.astype(np.float32).tolist(), model, version]
        if candidates is not None:
            params.append(list(candidates))
        rows = self._run(
            f"""
            WITH top AS (
                SELECT text_hash, list_cosine_similarity(vector, ?::FLOAT[]) AS sim
                FROM text_vectors WHERE model = ? AND model_version = ? {only}
                ORDER BY sim DESC LIMIT ?
            )
            SELECT arg_min(e.event_key, e.ts), arg_min(e.computer, e.ts), min(e.ts),
                   any_value(e.normalized), max(top.sim)
            FROM top JOIN events e USING (text_hash)
            WHERE e.event_key IS DISTINCT FROM ?
            GROUP BY top.text_hash ORDER BY max(top.sim) DESC LIMIT ?
            """, [*params, k + 1, exclude_event, k])
        return [{"event_key": r[0], "computer": r[1], "ts": r[2].isoformat() if r[2] else None,
                 "similarity": round(float(r[4]), 6), "normalized": r[3]} for r in rows]

    def enrich_state(self, events_after: int, vectors_after: int,
                     event_key: str | None = None, ts: datetime | None = None) -> EnrichState:
        """How the store stands before an enrichment (`EnrichState`), in one snapshot and one
        round trip: asked before every request, so it must stay cheap (a count is table
        metadata, a rowid range skips row groups, and the event key is looked for only where
        its time puts it: `key_time_filter`)."""
        where, params = key_time_filter("ts", ts)
        row = self._run(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM events WHERE rowid > ?), "
            "(SELECT count(*) FROM text_vectors), "
            "(SELECT count(*) FROM text_vectors WHERE rowid > ?), "
            f"(SELECT count(*) FROM events WHERE event_key = ? AND {where})",
            [events_after, vectors_after, event_key, *params])[0]
        return EnrichState(int(row[0]), int(row[1]), int(row[2]), int(row[3]), bool(row[4]))

    def text_vectors_after(self, model: str, version: str, after: int) -> Appended:
        """The vectors of one model version stored with a rowid above ``after`` (-1: all), in
        rowid order, with the counts that tell appends from deletions (`Appended`)."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION").fetchall()
            total, read, last = self._growth_in(cur, "text_vectors", after)
            tbl = cur.sql(
                "SELECT text_hash, vector FROM text_vectors WHERE rowid > ? AND model = ? "
                "AND model_version = ? ORDER BY rowid",
                params=[after, model, version]).to_arrow_table()
            cur.execute("COMMIT").fetchall()
        finally:
            cur.close()
        vec = tbl.column("vector").combine_chunks()
        flat = np.asarray(vec.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        dim = len(flat) // len(vec) if len(vec) else 0
        lengths = np.diff(np.asarray(vec.offsets.to_numpy(zero_copy_only=False)))
        if len(vec) and not np.all(lengths == dim):
            raise ValueError(f"text_vectors of {model} {version} differ in length")
        return Appended(total, read, last, hashes=tbl.column("text_hash").to_pylist(),
                        vectors=flat.reshape(len(vec), dim))

    def creations_after(self, after: int) -> Appended:
        """The process creations (event 1) stored with a rowid above ``after`` (-1: all), in
        rowid order, keyed as `process_creation` looks them up, with the counts of `Appended`."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION").fetchall()
            total, read, last = self._growth_in(cur, "events", after)
            rows = cur.execute(
                f"SELECT {_guid_sql('ProcessGuid')}, {_CREATION_COLUMNS} FROM events "
                "WHERE rowid > ? AND event_id = 1 ORDER BY rowid", [after]).fetchall()
            cur.execute("COMMIT").fetchall()
        finally:
            cur.close()
        return Appended(total, read, last,
                        creations=[(r[0], _creation(r[1:])) for r in rows if r[0] is not None])

    @staticmethod
    def _growth_in(cur, table: str, after: int) -> tuple[int, int, int]:
        """(rows, rows above ``after``, the highest rowid or ``after``) of a table of ours."""
        if table not in ("events", "text_vectors"):  # a name of ours, never input
            raise ValueError(f"no growth count for table {table!r}")
        total, read, last = cur.execute(
            f"SELECT (SELECT count(*) FROM {table}), count(*), max(rowid) FROM {table} "
            "WHERE rowid > ?", [after]).fetchall()[0]
        return int(total), int(read), int(last) if last is not None else after

    def assignment_details(self, model: str, event_keys: Sequence[str]) -> list[dict]:
        """The stored score details (``assignments.detail``) of these events for one model."""
        if not event_keys:
            return []
        rows = self._run(
            "SELECT detail FROM assignments WHERE model = ? AND event_key IN (SELECT unnest(?))",
            [model, list(event_keys)])
        return [orjson.loads(d) if d else {} for (d,) in rows]
