"""The DuckDB store: migrations, idempotent event writes, dead letters, import bookkeeping.

One process writes a database file. Events are keyed by `event_key`, a key the writer enforces
(no index: see `_insert_events`), and inserted from Arrow batches inside one transaction per
batch, so a replay stores nothing twice and a crash loses at most the batch in flight (its input
is then re-imported on resume).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from plugin import __version__
from plugin.errors import Unavailable, UsageError
from plugin.resources import schemas_dir
from plugin.store.base import EVENT_COLUMNS, DeadLetter, Store, VectorRows, utcnow
from plugin.store.alerts import AlertQueries
from plugin.store.events import EventQueries, key_time_filter
from plugin.store.export import ExportQueries
from plugin.store.fits import FitQueries
from plugin.store.incidents import IncidentQueries
from plugin.store.integrity import IntegrityQueries
from plugin.store.reports import ReportQueries
from plugin.store.retention import RetentionQueries
from plugin.store.triage import TriageQueries

log = structlog.get_logger(__name__)

_MIGRATION_RE = re.compile(r"^-- migration: (\d+)\s*$", re.MULTILINE)
#: the checkpoint threshold of a rescore (`DuckDBStore.rewriting`): the consumer's
_REWRITE_CHECKPOINT = "64MB"

_EVENT_SCHEMA = pa.schema([
    ("event_key", pa.string()), ("source", pa.string()), ("position", pa.int64()),
    ("event_id", pa.int32()), ("computer", pa.string()), ("user_name", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("record_id", pa.int64()), ("channel", pa.string()),
    ("shape", pa.string()), ("normalized", pa.string()), ("text_hash", pa.string()),
    ("fields", pa.string()), ("raw", pa.string()), ("imported_at", pa.timestamp("us", tz="UTC")),
])
_DEAD_SCHEMA = pa.schema([
    ("source", pa.string()), ("position", pa.int64()), ("reason", pa.string()),
    ("payload", pa.string()), ("at", pa.timestamp("us", tz="UTC")),
])


#: the columns of an `assignments` row; the last one, incident_id, may be missing from a row
ASSIGNMENT_COLUMNS = ("event_key", "model", "version", "cluster", "distance", "score",
                      "is_outlier", "detail", "explanation", "incident_id")


def assignment_table(rows: Sequence[dict]) -> pa.Table:
    """Assignment rows (dicts from the score stage) as an Arrow table of every column."""
    return pa.table({**{c: [r[c] for r in rows] for c in ASSIGNMENT_COLUMNS[:-1]},
                     "incident_id": pa.array([r.get("incident_id") for r in rows], pa.string())})


def load_migrations(path: Path | None = None) -> list[tuple[int, str]]:
    text = (path or schemas_dir() / "duckdb.sql").read_text(encoding="utf-8")
    marks = list(_MIGRATION_RE.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.append((int(m.group(1)), text[m.end():end]))
    versions = [v for v, _ in out]
    if versions != sorted(set(versions)) or not versions:
        raise UsageError(f"{path or 'schemas/duckdb.sql'}: migrations must be numbered upward")
    return out


def _size(value: str) -> str:
    """Validate a memory size like 1GB / 512MB before it goes into a SET statement."""
    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value.strip()):
        raise UsageError(f"db_memory_limit {value!r}: expected a size such as 1GB or 512MB")
    return value.strip()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a failure is DuckDB's buffer pool running full (the fix: a larger
    db_memory_limit), so the command line can say so without knowing DuckDB."""
    return isinstance(exc, duckdb.OutOfMemoryException)


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failure is a write refused for want of space (DuckDB's WAL or file, a spill),
    so the command line can say what to do."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _holder(message: str) -> str:
    """" (PID n: its command line)" from DuckDB's lock error, so the user knows what to stop."""
    m = re.search(r"PID (\d+)", message)
    if not m:
        return ""
    try:
        cmd = Path(f"/proc/{m.group(1)}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace").strip()
    except OSError:
        cmd = ""
    return f" (PID {m.group(1)}{': ' + cmd[:200] if cmd else ''})"


class DuckDBStore(AlertQueries, EventQueries, ExportQueries, FitQueries, IncidentQueries,
                  IntegrityQueries, ReportQueries,
                  RetentionQueries, TriageQueries, Store):
    """A sysmon-blt database in one DuckDB file (one writer; readers when nobody writes)."""

    #: text_vectors as the event_vectors view reads it (unique by key in a DuckDB file)
    _VECTORS = "text_vectors"

    def __init__(self, path: str | Path, read_only: bool = False,
                 memory_limit: str = "512MB", checkpoint_threshold: str = "1GB") -> None:
        self.path = str(path)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" in msg.lower():
                raise Unavailable(
                    f"database {self.path} is open in another process{_holder(msg)}: a DuckDB "
                    "file has one process at a time, even for reading, and a running `serve` or "
                    "`consume` holds its file until it stops. Stop it, use its HTTP API "
                    "(/feedback, the triage page) meanwhile, or use another --db file"
                ) from exc
            raise UsageError(f"cannot open database {self.path}: {msg}") from exc
        except duckdb.Error as exc:
            raise UsageError(f"{self.path} is not a usable DuckDB database: {exc}") from exc
        # DuckDB's default buffer pool is 80% of RAM; an import must stay small beside the models.
        self._run(f"SET memory_limit = '{_size(memory_limit)}'")
        self._run("SET preserve_insertion_order = false")
        # Checkpoint rarely in a bulk import: each checkpoint recompresses the big raw/fields
        # strings, and at the 16 MB default an import spent more time checkpointing than inserting
        # (measured). Data not yet checkpointed stays in memory, though: a long-running consumer
        # asks for a small threshold, or its RSS grows with the WAL (measured: +80 MB per 10k
        # events at 1GB).
        self._checkpoint_threshold = _size(checkpoint_threshold)
        self._run(f"SET checkpoint_threshold = '{self._checkpoint_threshold}'")
        # DuckDB draws a progress bar on stdout for queries over 2 s: stdout is for data
        # (`--json`, pipes), and it corrupted a long import's JSON summary.
        self._run("SET enable_progress_bar = false")
        if not read_only:
            self.migrate()

    # -- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        try:
            row = self._run("SELECT max(version) FROM schema_version")[0]
        except duckdb.CatalogException:
            return 0
        return int(row[0] or 0)

    def migrate(self) -> None:
        self._migrate(load_migrations())

    def _migrate(self, migrations: list[tuple[int, str]]) -> None:
        current = self.schema_version()
        newest = migrations[-1][0]
        if current > newest:
            raise UsageError(
                f"database {self.path} has schema version {current}, newer than this release "
                f"knows ({newest}); upgrade sysmon-blt"
            )
        for version, sql in migrations:
            if version <= current:
                continue
            self.con.begin()
            try:
                self._run(sql)
                self._run(
                    "INSERT INTO schema_version VALUES (?, ?, ?)", [version, utcnow(), __version__]
                )
                self.con.commit()
            except Exception:
                self._rollback()
                raise
            log.info("db_migrated", db=self.path, version=version)

    # -- writes ----------------------------------------------------------------------------
    def write_batch(self, events: dict[str, list[Any]], dead: Sequence[DeadLetter],
                    vectors: Sequence[VectorRows] = (), assignments: Sequence[dict] = (),
                    alerts: Sequence[dict] = (), *, incidents: Sequence[dict] = ()) -> int:
        """Insert one batch in one transaction: event rows (column lists), dead letters, new
        text vectors, assignments, alerts and incidents (only newly stored events fold into an
        alert's or incident's counts when events come with the batch). Returns how many events
        were new."""
        n = len(events["event_key"]) if events else 0
        self.con.begin()
        try:
            new = 0
            inserted: set[str] | None = None  # None: no events written, every score counts
            for vr in vectors:
                self._insert_vectors(vr)
            if n:
                tbl = pa.Table.from_pydict(events, schema=_EVENT_SCHEMA)
                self.con.register("_batch_events", tbl)
                # an alert of a replayed event (stored before a crash) never folds in
                inserted = self._insert_events("_batch_events", tbl)
                self.con.unregister("_batch_events")
                new = len(inserted)
                alerts = [a for a in alerts if a["event_key"] in inserted]
            if assignments:
                self._upsert_assignments(assignments, inserted)
            if alerts:
                self._upsert_alerts(alerts)
            if incidents:
                self._write_incidents(incidents, assignments, inserted)
            if dead:
                at = utcnow()
                dtbl = pa.Table.from_pydict({
                    "source": [d.source for d in dead],
                    "position": [d.position for d in dead],
                    "reason": [d.reason for d in dead],
                    "payload": [d.payload for d in dead],
                    "at": [at] * len(dead),
                }, schema=_DEAD_SCHEMA)
                self.con.register("_batch_dead", dtbl)
                # a record read again after a crash (an import rerun, a Kafka replay) is one
                # dead letter, not two: its source, position and reason are already stored
                self._run("INSERT INTO dead_letters SELECT * FROM _batch_dead b WHERE "
                          "b.position IS NULL OR NOT EXISTS (SELECT 1 FROM dead_letters d "
                          "WHERE d.source = b.source AND d.position = b.position "
                          "AND d.reason = b.reason)")
                self.con.unregister("_batch_dead")
            self.con.commit()
        except Exception:
            self._rollback()
            raise
        return new

    @contextmanager
    def rewriting(self) -> Iterator[None]:
        """Checkpoint often while a rescore replaces every assignment row: appended rows and
        deleted ones wait in the pool (and spill to its temp files) until a checkpoint, and at
        the import's 1 GB threshold a rescore of the OTRF folder (1.19M rows) spilled 400 MB
        and crawled, every batch's delete scanning the spilled blocks again. A rescore writes
        no events, so its checkpoints are cheap."""
        self._run(f"SET checkpoint_threshold = '{_REWRITE_CHECKPOINT}'")
        try:
            yield
        finally:
            self._run(f"SET checkpoint_threshold = '{self._checkpoint_threshold}'")

    # -- keys of the per-event tables, enforced by the writer -------------------------------
    # `events` and `assignments` carry no key index (migration 9): DuckDB holds an index whole
    # in its buffer pool, which bounded how many events a file could take. One writer per file
    # (the DuckDB lock; on a DuckLake, `LakeStore` adds a guard for concurrent creators).
    def _insert_events(self, batch: str, tbl: pa.Table) -> set[str]:
        """Insert the registered batch's events whose key no stored row holds, once each; the
        keys that were new. The check reads only rows where the batch's keys can be: the
        batch's time range, and rows without a time for events without one (`key_time_filter`)."""
        ts = tbl.column("ts")
        span = pc.min_max(ts)
        parts = []  # (which of the batch's events, where a stored twin of theirs can be)
        if ts.null_count < len(ts):
            parts.append(("b.ts IS NOT NULL",
                          key_time_filter("e.ts", span["min"].as_py(), span["max"].as_py())))
        if ts.null_count:
            parts.append(("b.ts IS NULL", key_time_filter("e.ts", None)))
        new: set[str] = set()
        for mine, (theirs, params) in parts:
            new |= {r[0] for r in self._run(
                f"SELECT DISTINCT b.event_key FROM {batch} b WHERE {mine} AND NOT EXISTS "
                f"(SELECT 1 FROM events e WHERE e.event_key = b.event_key AND {theirs})", params)}
        cols = ", ".join(EVENT_COLUMNS)
        if len(new) == tbl.num_rows:  # the usual batch: every key new, none twice
            self._run(f"INSERT INTO events ({cols}) SELECT {cols} FROM {batch}")
        elif new:
            self.con.register("_new_keys", pa.table({"k": sorted(new)}))
            self._run(f"INSERT INTO events ({cols}) SELECT {cols} FROM {batch} "
                      "WHERE event_key IN (SELECT k FROM _new_keys) "
                      "QUALIFY row_number() OVER (PARTITION BY event_key) = 1")
            self.con.unregister("_new_keys")
        return new

    def _merge(self, table: str, select: str, keys: Sequence[str], sets: Sequence[str],
               params: list | None = None) -> None:
        """`_upsert` for a table whose key the writer enforces (no index to conflict on)."""
        on = " AND ".join(f"{table}.{k} = incoming.{k}" for k in keys)
        self._run(f"MERGE INTO {table} USING ({select}) incoming ON {on} "
                  "WHEN MATCHED THEN UPDATE SET "
                  + ", ".join(x.format(new="incoming") for x in sets)
                  + " WHEN NOT MATCHED THEN INSERT BY NAME", params)

    def _insert_new(self, table: str, select: str, keys: Sequence[str],
                    params: list | None = None) -> None:
        """Insert the rows of ``select`` (named as the table's columns) whose key ``table`` does
        not hold yet."""
        self._run(f"INSERT OR IGNORE INTO {table} BY NAME {select}", params)

    def _upsert(self, table: str, select: str, keys: Sequence[str], sets: Sequence[str],
                params: list | None = None) -> None:
        """Insert the rows of ``select`` (named as the table's columns); a row whose key exists
        updates it by ``sets`` (``column = expression``, the incoming row named ``{new}``)."""
        self._run(f"INSERT INTO {table} BY NAME {select} ON CONFLICT ({', '.join(keys)}) "
                  "DO UPDATE SET " + ", ".join(x.format(new="excluded") for x in sets), params)

    def _link_returning(self, links: str) -> list[tuple[str, bool]]:
        """Link the assignments named in ``links`` (event_key, model, incident_id) that have no
        incident yet; (incident_id, is_outlier) of each row that changed."""
        return [(r[0], bool(r[1])) for r in self._run(
            f"UPDATE assignments SET incident_id = l.incident_id FROM {links} l "
            "WHERE assignments.event_key = l.event_key AND assignments.model = l.model "
            "AND assignments.incident_id IS NULL "
            "RETURNING assignments.incident_id, assignments.is_outlier")]

    def _rollback(self) -> None:
        """Roll back the open transaction; a failed commit has already ended it."""
        try:
            self.con.rollback()
        except duckdb.TransactionException:
            pass

    def _insert_vectors(self, vr: "VectorRows") -> None:
        if not vr.text_hashes:
            return
        mat = np.ascontiguousarray(vr.vectors, dtype=np.float32)
        dim = mat.shape[1]
        offsets = pa.array(np.arange(0, (len(mat) + 1) * dim, dim, dtype=np.int32))
        cols = {
            "model": [vr.model] * len(mat),
            "model_version": [vr.model_version] * len(mat),
            "text_hash": vr.text_hashes,
            "vector": pa.ListArray.from_arrays(offsets, pa.array(mat.ravel())),
            "created": pa.array([utcnow()] * len(mat), pa.timestamp("us", tz="UTC")),
        }
        if vr.window_bits is not None:  # inserted by name: without them the column stays NULL
            cols["window_bits"] = pa.array(
                [None if b is None or b != b else float(b) for b in vr.window_bits], pa.float64())
        tbl = pa.table(cols)
        self.con.register("_batch_vectors", tbl)
        self._insert_new_vectors()
        self.con.unregister("_batch_vectors")

    def _insert_new_vectors(self) -> None:
        """Insert the rows of ``_batch_vectors`` whose (model, version, text) has no vector yet.
        `text_vectors` has no key index (migration 10): the embedding cache hands each text out
        once per process, and this check keeps a second copy out all the same. An inner join,
        so DuckDB builds its hash table on the batch and streams the stored rows past it (an
        anti-join would hash the whole table)."""
        stored = [r[0] for r in self._run(
            "SELECT n.text_hash FROM _batch_vectors n JOIN text_vectors t ON t.model = n.model "
            "AND t.model_version = n.model_version AND t.text_hash = n.text_hash")]
        where = " WHERE text_hash NOT IN (SELECT unnest(?::VARCHAR[]))" if stored else ""
        self._run("INSERT INTO text_vectors BY NAME SELECT * FROM _batch_vectors" + where
                  + " QUALIFY row_number() OVER (PARTITION BY model, model_version, text_hash) = 1",
                  [stored] if stored else None)

    def _upsert_assignments(self, rows: Sequence[dict], inserted: set[str] | None) -> None:
        """One row per event and model: scores of events this batch stored new are appended
        (no row can hold their key yet); others (a replay, a rescore: ``inserted`` None) replace
        the older row. An event's incident link, once made, stays when a row without one
        replaces it (a replayed batch scored before its tree's first outlier);
        `reset_incidents` clears links for a rescore."""
        fresh = [] if inserted is None else [r for r in rows if r["event_key"] in inserted]
        again = rows if inserted is None else [r for r in rows if r["event_key"] not in inserted]
        if fresh:
            self.con.register("_fresh_assign", assignment_table(fresh))
            self._run("INSERT INTO assignments BY NAME SELECT * FROM _fresh_assign")
            self.con.unregister("_fresh_assign")
        if again:
            self._replace_assignments(assignment_table(again))

    def _replace_assignments(self, tbl: pa.Table) -> None:
        """Replace the stored rows of these (event, model) pairs, keeping an incident link a
        new row lacks. A delete and an append, not a MERGE: DuckDB holds an UPDATE's old
        versions in memory it cannot spill until a checkpoint, and a rescore rewrites every
        row of a store (measured on the OTRF folder's 1.19M rows: the pool grew 3.5 MB per
        10,000 rows updated and the settle pass failed at the 512 MB default; a delete is a
        bitmask and an append spills)."""
        self.con.register("_batch_assign", tbl)
        # the links read by a join, then a plain delete: a DELETE ... RETURNING took ~400 ms per
        # 5,000 rows where both statements take ~15 ms (a 300k-row table; it was half of the
        # cold-start settle pass of an import)
        linked = {(k, m): i for k, m, i in self._run(
            "SELECT a.event_key, a.model, a.incident_id FROM assignments a "
            "SEMI JOIN _batch_assign b ON a.event_key = b.event_key AND a.model = b.model "
            "WHERE a.incident_id IS NOT NULL")}
        self._run("DELETE FROM assignments a USING _batch_assign b "
                  "WHERE a.event_key = b.event_key AND a.model = b.model")
        self.con.unregister("_batch_assign")
        if linked:
            keys, models = tbl.column("event_key").to_pylist(), tbl.column("model").to_pylist()
            ids = [i if i is not None else linked.get((k, m))
                   for k, m, i in zip(keys, models, tbl.column("incident_id").to_pylist())]
            tbl = tbl.set_column(tbl.schema.get_field_index("incident_id"), "incident_id",
                                 pa.array(ids, pa.string()))
        self.con.register("_batch_assign", tbl)
        self._run("INSERT INTO assignments BY NAME SELECT * FROM _batch_assign")
        self.con.unregister("_batch_assign")

    def _upsert_alerts(self, rows: Sequence[dict]) -> None:
        """Alerts fold twins (the same canonical text) into one row with a count."""
        folded: dict[str, dict] = {}
        now = utcnow()
        for r in rows:
            ts = r["ts"] or now
            a = folded.get(r["alert_id"])
            if a is None:
                folded[r["alert_id"]] = {**r, "first": ts, "last": ts, "count": 1}
            else:
                a["count"] += 1
                a["first"], a["last"] = min(a["first"], ts), max(a["last"], ts)
                a["score"] = max(a["score"], r["score"])  # as across batches: the highest
        tbl = pa.table({
            "alert_id": [a["alert_id"] for a in folded.values()],
            "event_key": [a["event_key"] for a in folded.values()],
            "model": [a["model"] for a in folded.values()],
            "score": [a["score"] for a in folded.values()],
            "first_seen": pa.array([a["first"] for a in folded.values()], pa.timestamp("us", tz="UTC")),
            "last_seen": pa.array([a["last"] for a in folded.values()], pa.timestamp("us", tz="UTC")),
            "count": [a["count"] for a in folded.values()],
            # a new alert's status: open, or suppressed by a rule (an existing one keeps its own)
            "status": [a.get("status") or "open" for a in folded.values()],
        })
        self.con.register("_batch_alerts", tbl)
        self._upsert("alerts", "SELECT * FROM _batch_alerts", ("alert_id",), [
            "count = alerts.count + {new}.count",
            "first_seen = least(alerts.first_seen, {new}.first_seen)",
            "last_seen = greatest(alerts.last_seen, {new}.last_seen)",
            "score = greatest(alerts.score, {new}.score)"])
        self.con.unregister("_batch_alerts")

    # -- models and vectors ------------------------------------------------------------------
    def register_model(self, model: str, version: str, dim: int, directory: str | None) -> None:
        """Record a model version, and give event_vectors a fixed-size FLOAT[d] column when
        every model stored has the same dimension (array functions and indexes need one)."""
        self._insert_new("models", "SELECT ? AS model, ? AS model_version, ? AS dim, "
                         "? AS directory, ? AS first_used", ("model", "model_version"),
                         [model, version, dim, directory, utcnow()])
        dims = {int(r[0]) for r in self._run("SELECT DISTINCT dim FROM models")}
        cast = f"v.vector::FLOAT[{dims.pop()}]" if len(dims) == 1 else "v.vector"
        self._run(
            "CREATE OR REPLACE VIEW event_vectors AS SELECT e.event_key, v.model, "
            f"v.model_version, {cast} AS vector FROM events e "
            f"JOIN {self._VECTORS} v ON v.text_hash = e.text_hash"
        )

    def read_vectors(self, model: str, version: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """Vectors by text hash, read on a cursor of its own (the sink thread owns `con`)."""
        cur = self.con.cursor()
        try:
            tbl = pa.table({"h": hashes})
            cur.register("_want", tbl)
            rows = cur.execute(
                "SELECT text_hash, vector FROM text_vectors JOIN _want ON text_hash = h "
                "WHERE model = ? AND model_version = ?", [model, version]).fetchall()
        finally:
            cur.close()
        return {h: np.asarray(v, dtype=np.float32) for h, v in rows}

    def read_window_bits(self, model: str, version: str, hashes: list[str]) -> dict[str, float]:
        """Stored window surprisal by text hash (texts without one left out), on a cursor of its
        own like `read_vectors`."""
        cur = self.con.cursor()
        try:
            cur.register("_want", pa.table({"h": hashes}))
            rows = cur.execute(
                "SELECT text_hash, window_bits FROM text_vectors JOIN _want ON text_hash = h "
                "WHERE model = ? AND model_version = ? AND window_bits IS NOT NULL",
                [model, version]).fetchall()
        finally:
            cur.close()
        return dict(rows)

    def vector_hashes(self, model: str, version: str) -> set[str]:
        return {r[0] for r in self._run(
            "SELECT text_hash FROM text_vectors WHERE model = ? AND model_version = ?",
            [model, version])}

    def _run(self, sql: str, params: list | None = None) -> list:
        """Execute and drain the result (newer DuckDB refuses work on a connection with one open)."""
        return self.con.execute(sql, params or []).fetchall()

    # -- imports (chain of custody, resume) -------------------------------------------------
    def completed_import(self, sha256: str) -> dict[str, Any] | None:
        rows = self._run(
            "SELECT path, sysmon_events, records FROM imports WHERE sha256 = ? AND status = 'complete' "
            "ORDER BY finished DESC LIMIT 1", [sha256]
        )
        if not rows:
            return None
        row = rows[0]
        return {"path": row[0], "sysmon_events": int(row[1] or 0), "records": int(row[2] or 0)}

    def record_import(self, row: dict[str, Any]) -> None:
        cols = ["path", "sha256", "bytes", "records", "sysmon_events", "new_events", "duplicates",
                "skipped_non_sysmon", "dead_letters", "started", "finished", "status",
                "tool_version", "model_version", "config_hash"]
        self._run(
            f"INSERT INTO imports ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [row.get(c) for c in cols],
        )

    def record_model_runs(self, command: str, started: datetime, run_seconds: float,
                          run_events: int, embed_stats: Sequence[dict]) -> None:
        """One `model_runs` row per model of a run: what each model cost, for the report."""
        eps = run_events / run_seconds if run_seconds else None
        for st in embed_stats:
            self._run("INSERT INTO model_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                started, command, st["model"], st["model_version"], st.get("events", 0),
                st["texts_embedded"], st["embed_seconds"], st.get("texts_per_second"),
                run_seconds, eps])

    def for_thread(self) -> "DuckDBStore":
        """The same database on a connection of its own, for another thread (the HTTP service
        beside the consumer): one DuckDB connection must not run two threads' transactions."""
        other = copy.copy(self)
        other.con = self.con.cursor()
        return other

    def close(self) -> None:
        self.con.close()

