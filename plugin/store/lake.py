"""The DuckLake store: many writers (one consumer per machine) share one catalog and one data path.

A DuckLake keeps its catalog in PostgreSQL (``ducklake:postgres:dbname=... host=...``), SQLite
(``ducklake:sqlite:PATH``) or a DuckDB file (``ducklake:PATH.ducklake``), and its rows in Parquet
files under ``lake_data_path`` (a folder or an object-storage URL). Every DuckDB client reads and
writes it, so the same tables and queries as the DuckDB file serve here; what differs is below.

* **No keys.** DuckLake enforces no PRIMARY KEY, so the lake's DDL is the file's without them
  (`lake_migrations`) and the writer enforces uniqueness: an event goes in only when no committed
  row holds its key. The check reads only the data files whose time range covers the batch (an
  event's key is derived from its own time, so a replayed event has the same time), which keeps a
  replay after a crash and rebalance a no-op without scanning the whole table. Upserts are MERGE.
* **Optimistic commits.** Two instances folding into the same alert or incident row conflict at
  commit; the loser's whole batch transaction runs again (`write_batch` retries), so counts fold
  once. Appends of different events never conflict. Two appends of the same *new* key would not
  conflict either (DuckLake sees two inserts), so a transaction that creates an alert, incident,
  score or incident link also bumps the one row of `lake_key_guard`: two creators then both
  change that row, and the second to commit runs again and finds the first one's row.
* **Migrations once.** Instances starting together on an empty PostgreSQL catalog take a
  PostgreSQL advisory lock around the catalog's creation and the migrations; the others wait and
  then find the schema current.
* **A catalog outage is waited out.** When the catalog stops answering (PostgreSQL restarted,
  failed over, its network down), a statement outside a transaction is run again, and a
  transaction (a batch) runs again whole, for up to `CATALOG_WAIT_SECONDS`; a consumer meanwhile
  commits no offset, so it resumes where it was. Past that, the command fails with a message
  naming the catalog (exit 1) and nothing of the batch in flight is stored.
* **The rare concurrent duplicate** (a paused "zombie" instance writing after its partitions
  moved on, or one event produced into two partitions) is not fenced: two writers that check at
  the same moment both insert. `maintain` removes such duplicates (the oldest row of a key stays),
  and the `events_unique` view reads one row per key meanwhile.

Extensions load offline from the ``duckdb-extension-*`` wheels (a plain ``LOAD ducklake`` would try
to download them).
"""

from __future__ import annotations

import random
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import duckdb
import pyarrow as pa
import structlog

from plugin.errors import Unavailable, UsageError
from plugin.store.base import DeadLetter, Store, VectorRows
from plugin.store.duckdb import ASSIGNMENT_COLUMNS, DuckDBStore, _size, load_migrations

log = structlog.get_logger(__name__)

PREFIX = "ducklake:"
#: the advisory lock key instances take around catalog creation and migrations ("sblt")
MIGRATION_LOCK = 0x73626C74
#: how often a batch transaction runs again after losing a commit race
MAX_RETRIES = 30
#: how long a statement or batch waits for an unreachable catalog before the command fails
CATALOG_WAIT_SECONDS = 300.0
#: what the PostgreSQL client says when it cannot reach the server or lost its connection
_UNREACHABLE = re.compile(r"unable to connect|connection refused|could not connect|server closed "
                          r"the connection|terminating connection|no connection to the server|"
                          r"connection to server .* failed|ssl syscall", re.IGNORECASE)
#: the one-row table whose row every transaction creating a key changes (`_guard_creation`)
GUARD = "lake_key_guard"
#: plain inserts whose rows are counted (an incident's alerts): a duplicate would count twice
_GUARDED_INSERTS = frozenset({"incident_alerts"})

T = TypeVar("T")


def is_lake(db: str | Path) -> bool:
    return str(db).startswith(PREFIX)


def extension_path(name: str) -> str:
    """The extension binary the ``duckdb-extension-<name>`` wheel carries, for an offline LOAD."""
    import importlib.util

    module = f"duckdb_extension_{name}"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"a DuckLake store needs the {module.replace('_', '-')} package (pip install "
            f"'{module.replace('_', '-')}=={duckdb.__version__}'), matching duckdb "
            f"{duckdb.__version__}")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob(f"extensions/v{duckdb.__version__}/*.duckdb_extension"))
    if not found:
        raise UsageError(f"{module} carries no extension for duckdb {duckdb.__version__} "
                         f"(under {root}/extensions): install the matching release")
    return str(found[0])


#: marks a migration of the DuckDB file that a DuckLake skips
FILE_ONLY = re.compile(r"^-- file only\s*$", re.MULTILINE)


def lake_migrations() -> list[tuple[int, str]]:
    """The DuckDB file's migrations without the keys DuckLake cannot enforce: one schema, two
    dialects (a column added for the file is added for the lake by the same migration). A
    migration marked ``-- file only`` (dropping a key the lake never had) is a no-op here."""
    out = []
    for version, sql in load_migrations():
        if FILE_ONLY.search(sql):
            out.append((version, "SELECT 1"))
            continue
        sql = re.sub(r",\s*PRIMARY KEY\s*\([^)]*\)", "", sql)
        sql = re.sub(r"\s+PRIMARY KEY\b", "", sql)
        out.append((version, sql))
    return out


def _catalog(db: str) -> tuple[str, str | None]:
    """(the catalog part after ``ducklake:``, the PostgreSQL connection string or None)."""
    spec = db[len(PREFIX):].strip()
    if not spec:
        raise UsageError(f"--db {db!r}: name a catalog, e.g. ducklake:postgres:dbname=soc "
                         "host=db.internal, ducklake:sqlite:catalog.sqlite or "
                         "ducklake:catalog.ducklake")
    if spec.startswith("postgres:"):
        return spec, spec[len("postgres:"):]
    return spec, None


def _conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and "conflict" in str(exc).lower()


class LakeStore(DuckDBStore):
    """A sysmon-blt database in a DuckLake (catalog plus Parquet data; many writers)."""

    #: text_vectors read one row per key (two instances may embed the same new text at once)
    _VECTORS = ("(SELECT * FROM text_vectors QUALIFY row_number() OVER "
                "(PARTITION BY model, model_version, text_hash ORDER BY created) = 1)")

    def __init__(self, db: str, *, data_path: str | None, read_only: bool = False,
                 memory_limit: str = "512MB", catalog_wait: float = CATALOG_WAIT_SECONDS) -> None:
        self.path = redact_dsn(db)  # what messages and logs name: no catalog password
        spec, pg = _catalog(db)
        self.con = duckdb.connect()
        self._run(f"SET memory_limit = '{_size(memory_limit)}'")
        self._run("SET preserve_insertion_order = false")
        self._run("SET enable_progress_bar = false")
        self._run("SET autoinstall_known_extensions = false")
        self._run("SET autoload_known_extensions = false")
        self._run(f"LOAD '{extension_path('ducklake')}'")
        if pg is not None:
            self._run(f"LOAD '{extension_path('postgres_scanner')}'")
        elif spec.startswith("sqlite:"):
            self._run(f"LOAD '{extension_path('sqlite_scanner')}'")
        options = []
        if data_path:
            options.append(f"DATA_PATH {_literal(data_path)}")
        if read_only:
            options.append("READ_ONLY")
        attach = (f"ATTACH {_literal(PREFIX + spec)} AS lake"
                  + (f" ({', '.join(options)})" if options else ""))
        lock = self._migration_lock(pg) if pg is not None and not read_only else None
        try:
            try:
                self._run(attach)
            except duckdb.Error as exc:
                raise UsageError(f"cannot open DuckLake {self.path}: {_first_line(exc)}"
                                 + ("" if data_path else " (a new lake needs lake_data_path: "
                                                    "the config key, or SYSMON_BLT_LAKE_DATA_PATH)")
                                 ) from exc
            self._run("USE lake")
            # `USE` holds for this connection only: cursors (readers beside the sink, another
            # thread's store) must name the lake too, or they find no table
            self.con = _InLake(self.con, db, catalog_wait)  # type: ignore[assignment]
            if not read_only:
                self.migrate()
                self._ensure_views()
        finally:
            if lock is not None:
                lock.commit()
                lock.close()
                self._run("DETACH _sblt_lock")

    def _migration_lock(self, dsn: str) -> duckdb.DuckDBPyConnection:
        """Hold a transaction-scoped PostgreSQL advisory lock until the returned cursor commits:
        instances starting together create the catalog and migrate one after the other."""
        try:
            self._run(f"ATTACH {_literal(dsn)} AS _sblt_lock (TYPE postgres)")
        except duckdb.Error as exc:
            raise UsageError(f"cannot reach the DuckLake catalog {self.path}: "
                             f"{_first_line(exc)}") from exc
        cur = self.con.cursor()
        cur.begin()
        cur.execute("CALL postgres_execute('_sblt_lock', "
                    f"'SELECT pg_advisory_xact_lock({MIGRATION_LOCK})')")
        return cur

    def migrate(self) -> None:
        """Migrations as the file's, from `lake_migrations`."""
        self._migrate(lake_migrations())

    def _ensure_views(self) -> None:
        self._run("CREATE VIEW IF NOT EXISTS events_unique AS SELECT * FROM events "
                  "QUALIFY row_number() OVER (PARTITION BY event_key ORDER BY imported_at) = 1")
        # the row key creators bump (`_guard_creation`); seeded once, under the migration lock
        # on PostgreSQL (a second seed row elsewhere is harmless: a bump changes every row)
        self._run(f"CREATE TABLE IF NOT EXISTS {GUARD} (creations BIGINT)")
        self._run(f"INSERT INTO {GUARD} SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {GUARD})")

    # -- writes: the writer enforces the keys ------------------------------------------------
    def write_batch(self, events: dict[str, list[Any]], dead: Sequence[DeadLetter],
                    vectors: Sequence[VectorRows] = (), assignments: Sequence[dict] = (),
                    alerts: Sequence[dict] = (), *, incidents: Sequence[dict] = ()) -> int:
        """The file's batch transaction, run again when another instance's commit won a race
        for the same rows (nothing of a lost attempt is kept)."""
        return self.retrying(lambda: super(LakeStore, self).write_batch(
            events, dead, vectors, assignments, alerts, incidents=incidents))

    def retrying(self, attempt: Callable[[], T]) -> T:
        """Run one transaction, again after a commit conflict (with a growing random pause),
        and again while the catalog is unreachable (up to `CATALOG_WAIT_SECONDS`)."""
        n = 0
        outage = CatalogOutage(self.path, self.con.catalog_wait)
        while True:
            try:
                result = attempt()
                outage.over()
                return result
            except duckdb.Error as exc:
                if outage.wait(exc):
                    continue
                if not _conflict(exc) or n == MAX_RETRIES - 1:
                    raise
                n += 1
                log.info("lake_commit_retry", attempt=n, reason=_conflict_line(exc)[:300])
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** (n - 1))))

    def _insert_new(self, table: str, select: str, keys: Sequence[str],
                    params: list | None = None) -> None:
        on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM n.{k}" for k in keys)
        missing = (f"SELECT * FROM ({select}) n WHERE NOT EXISTS "
                   f"(SELECT 1 FROM {table} t WHERE {on})")
        if table in _GUARDED_INSERTS:
            self._guard_creation(table, missing, params)
        partition = ", ".join("n." + k for k in keys)
        self._run(f"INSERT INTO {table} BY NAME {missing} "
                  f"QUALIFY row_number() OVER (PARTITION BY {partition}) = 1", params)

    def _insert_new_vectors(self) -> None:
        self._insert_new("text_vectors", "SELECT * FROM _batch_vectors",
                         ("model", "model_version", "text_hash"))

    def _upsert(self, table: str, select: str, keys: Sequence[str], sets: Sequence[str],
                params: list | None = None) -> None:
        """DuckLake enforces no key: every upsert is a guarded MERGE."""
        self._merge(table, select, keys, sets, params)

    def _merge(self, table: str, select: str, keys: Sequence[str], sets: Sequence[str],
               params: list | None = None) -> None:
        self._guard_creation(table, f"SELECT * FROM ({select}) n WHERE NOT EXISTS (SELECT 1 "
                             f"FROM {table} t WHERE "
                             + " AND ".join(f"t.{k} = n.{k}" for k in keys) + ")", params)
        super()._merge(table, select, keys, sets, params)

    rewriting = Store.rewriting  # a lake writes files at each commit: nothing waits in memory

    def _replace_assignments(self, tbl: pa.Table) -> None:
        """A guarded MERGE: a DuckLake update writes new files (no memory held until a
        checkpoint, the reason a DuckDB file deletes and appends instead), and the guard makes
        a concurrent writer of the same new key conflict."""
        self.con.register("_batch_assign", tbl)
        self._merge("assignments", "SELECT * FROM _batch_assign", ("event_key", "model"),
                    [f"{c} = {{new}}.{c}" for c in ASSIGNMENT_COLUMNS[2:-1]]
                    + ["incident_id = coalesce({new}.incident_id, assignments.incident_id)"])
        self.con.unregister("_batch_assign")

    def _guard_creation(self, table: str, missing: str, params: list | None) -> None:
        """Bump the guard row when ``missing`` (the incoming rows ``table`` holds no key of)
        finds any: a concurrent creator of the same key then conflicts at commit and runs again
        (DuckLake lets two inserts commit side by side, which would leave two rows of a key)."""
        if self._run(f"SELECT 1 FROM ({missing}) LIMIT 1", params):
            log.debug("lake_key_guard", table=table)
            self._run(f"UPDATE {GUARD} SET creations = creations + 1")

    def _link_returning(self, links: str) -> list[tuple[str, bool]]:
        """DuckLake has no UPDATE ... RETURNING: read what will change, then change it, in the
        same transaction."""
        changed = self._run(
            f"SELECT l.incident_id, a.is_outlier FROM assignments a JOIN {links} l "
            "ON a.event_key = l.event_key AND a.model = l.model WHERE a.incident_id IS NULL")
        if changed:
            self._run(f"UPDATE assignments SET incident_id = l.incident_id FROM {links} l "
                      "WHERE assignments.event_key = l.event_key AND assignments.model = l.model "
                      "AND assignments.incident_id IS NULL")
        return [(r[0], bool(r[1])) for r in changed]

    def _claim_key(self, table: str) -> None:
        self._run(f"UPDATE {GUARD} SET creations = creations + 1")

    def record_shipped_fit(self, *args: Any, **kwargs: Any) -> None:
        """Instances starting together on a new lake each record the shipped fit: one commits,
        the others run again and find it there."""
        self.retrying(lambda: super(LakeStore, self).record_shipped_fit(*args, **kwargs))

    def save_fit(self, *args: Any, **kwargs: Any) -> int:
        """Two fits at once would both take version max+1: the loser runs again and takes the
        next one."""
        return self.retrying(lambda: super(LakeStore, self).save_fit(*args, **kwargs))

    def register_model(self, model: str, version: str, dim: int, directory: str | None) -> None:
        """The file's, as one transaction run again on a conflict: instances starting together
        all replace the event_vectors view, and DuckLake lets one of them commit."""
        def attempt() -> None:
            self.con.begin()
            try:
                super(LakeStore, self).register_model(model, version, dim, directory)
                self.con.commit()
            except Exception:
                self._rollback()
                raise
        self.retrying(attempt)

    def keep_evaluation(self, event_keys, is_attack, how, spec, results) -> None:
        self.retrying(lambda: super(LakeStore, self).keep_evaluation(
            event_keys, is_attack, how, spec, results))

    def _replace_labels(self, table: str) -> None:
        self._run(f"DELETE FROM labels WHERE event_key IN (SELECT event_key FROM {table})")
        self._run(f"INSERT INTO labels SELECT * FROM {table}")

    # -- operations --------------------------------------------------------------------------
    def maintain(self, *, older_than_days: float = 7.0) -> dict[str, int]:
        """Remove duplicate rows a race let in (the oldest row of a key stays), flush the rows
        the catalog holds inline into Parquet, merge small files, rewrite files mostly deleted,
        expire snapshots older than ``older_than_days`` and delete the files only expired
        snapshots referenced. Safe beside running writers: each step is its own transaction
        (run again after a commit conflict), and files still referenced by a snapshot younger
        than the cutoff stay, so a reader in the middle of a query keeps its files. Files no
        snapshot ever referenced are left alone: a writer's uncommitted files look the same."""
        if older_than_days < 0:
            raise UsageError(f"maintain: snapshot age {older_than_days} days must be >= 0")
        done: dict[str, int] = {}

        def dedupe() -> None:
            self.con.begin()
            try:
                for table, keys, order in _UNIQUE:
                    done[f"duplicate_{table}"] = self._count_delete(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} QUALIFY "
                        f"row_number() OVER (PARTITION BY {', '.join(keys)} ORDER BY {order}, "
                        "rowid) > 1)", [])
                self.con.commit()
            except Exception:
                self._rollback()
                raise

        self.retrying(dedupe)
        # each result row names a table with what was done to it (or one expired snapshot, or
        # one deleted file): the counts a person reads are the sums
        done["rows_flushed"] = self._call("ducklake_flush_inlined_data('lake')", "rows_flushed")
        done["files_merged"] = self._call("ducklake_merge_adjacent_files('lake')",
                                          "files_processed")
        done["files_rewritten"] = self._call("ducklake_rewrite_data_files('lake')",
                                             "files_processed")
        cutoff = datetime.now(timezone.utc) - timedelta(days=older_than_days)
        done["snapshots_expired"] = self._call(
            "ducklake_expire_snapshots('lake', older_than => ?::TIMESTAMPTZ)", None, [cutoff])
        done["files_deleted"] = self._call(
            "ducklake_cleanup_old_files('lake', cleanup_all => true)", None)
        log.info("lake_maintained", db=self.path, older_than_days=older_than_days, **done)
        return done

    def _call(self, function: str, column: str | None, params: list | None = None) -> int:
        """CALL a DuckLake maintenance function in a transaction of its own (again after a
        commit conflict with a writer): the sum of ``column`` over its rows, or (None) how many
        rows it returned."""
        def attempt() -> int:
            cur = self.con.execute(f"CALL {function}", params or [])
            names = [d[0] for d in cur.description or ()]
            rows = cur.fetchall()
            if column is None:
                return len(rows)
            i = names.index(column)
            return int(sum(r[i] or 0 for r in rows))
        return self.retrying(attempt)

    def for_thread(self) -> "LakeStore":
        return super().for_thread()  # type: ignore[return-value]


class CatalogOutage:
    """One run of waits for an unreachable catalog: `wait` says whether to try again (after a
    pause growing to 5 s), logs the outage once and its end once, and past ``limit`` seconds
    raises `Unavailable` naming the catalog."""

    def __init__(self, path: str, limit: float) -> None:
        self.path, self.limit = path, limit
        self.since: float | None = None
        self.pause = 0.25

    def wait(self, exc: BaseException) -> bool:
        if not _UNREACHABLE.search(str(exc)):
            return False
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("lake_catalog_unreachable", catalog=self.path,
                        waiting_up_to_s=self.limit, error=_first_line(exc)[:300])
        elif now - self.since > self.limit:
            raise Unavailable(f"the DuckLake catalog {self.path} did not answer for "
                              f"{self.limit:.0f} s ({_first_line(exc)}); nothing of the batch in "
                              "flight was stored: run the same command again once it is back"
                              ) from exc
        time.sleep(self.pause)
        self.pause = min(5.0, self.pause * 2)
        return True

    def over(self) -> None:
        if self.since is not None:
            log.warning("lake_catalog_back", catalog=self.path,
                        waited_s=round(time.monotonic() - self.since, 1))
            self.since = None


class _InLake:
    """A DuckDB connection whose cursors read and write the lake by default, as it does, and
    whose statements outside a transaction wait out a catalog outage (`CatalogOutage`); inside
    one, the error goes up, and the transaction's owner (`LakeStore.retrying`) runs it again.

    A cursor is a new connection to the same DuckDB instance and starts in its in-memory
    database: without this, every query a store runs on a cursor (`read_vectors`, the
    integrity and event readers, `for_thread`) failed with "Table ... does not exist".
    Everything else is the connection's own."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str,
                 catalog_wait: float = CATALOG_WAIT_SECONDS) -> None:
        self._con = con
        self._path = path
        self.catalog_wait = catalog_wait
        self._in_transaction = False

    def cursor(self) -> "_InLake":
        cur = _InLake(self._con.cursor(), self._path, self.catalog_wait)
        cur.execute("USE lake")
        return cur

    def execute(self, sql: str, params: Any = None) -> Any:
        if self._in_transaction:
            return self._con.execute(sql, params)
        outage = CatalogOutage(self._path, self.catalog_wait)
        while True:
            try:
                result = self._con.execute(sql, params)
                outage.over()
                return result
            except duckdb.Error as exc:
                if not outage.wait(exc):
                    raise

    def begin(self) -> Any:
        self._in_transaction = True
        return self._con.begin()

    def commit(self) -> Any:
        try:
            return self._con.commit()
        finally:
            self._in_transaction = False

    def rollback(self) -> Any:
        try:
            return self._con.rollback()
        finally:
            self._in_transaction = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


#: (table, key columns, which row of a key stays): what `maintain` deduplicates
_UNIQUE = (
    ("events", ("event_key",), "imported_at"),
    ("text_vectors", ("model", "model_version", "text_hash"), "created"),
    ("assignments", ("event_key", "model"), "version DESC"),
    ("incident_alerts", ("incident_id", "alert_id"), "incident_id"),
)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def redact_dsn(db: str) -> str:
    """``db`` with a catalog password hidden (``password=...`` of a libpq string, the
    ``user:password@`` of a URL), for messages and logs."""
    db = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", db, flags=re.IGNORECASE)
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", db)


def _first_line(exc: BaseException) -> str:
    """The error's first line for a message, with any catalog password in it hidden (the
    PostgreSQL client repeats the connection string it failed with)."""
    return redact_dsn(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__


def _conflict_line(exc: BaseException) -> str:
    """The line of a failed commit that says what conflicted (its first line only says that
    the commit failed)."""
    lines = str(exc).strip().splitlines()
    return next((x for x in lines if "conflict" in x.lower()), _first_line(exc))
