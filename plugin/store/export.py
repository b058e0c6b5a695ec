"""Tables out for other tools (`sysmon-blt export`): Parquet or CSV files, one per table.

DuckDB's ``COPY (SELECT ...) TO 'file'`` streams a table to disk in row groups, so exporting a
case of millions of events never holds a table in memory. A Parquet row group is held whole (per
writing thread) until it is compressed and written: at DuckDB's default of 122,880 rows, an
``events`` row of ~3 KB made each group ~350 MB and the OTRF folder's store (595,618 events) could
not be exported at any pool up to 512 MB. So an export writes on one thread, in row groups sized to
an eighth of the pool from the table's sampled row width (`row_group_rows`). COPY takes no bound parameter for the
file name, so the path is the one thing spliced into the statement: made absolute, refused if it
holds a control character, and quoted as a SQL string literal (single quotes doubled). Table
names come only from the fixed list below, never from the user's text as such. Each file is
written under a hidden partial name and renamed when complete, so a failed or interrupted export
never leaves a truncated file under the table's own name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import structlog

from plugin.errors import UsageError

log = structlog.get_logger(__name__)

#: exported unless --tables says otherwise: what other tools join and chart
DEFAULT_TABLES = (
    "events", "assignments", "alerts", "alert_changes", "incidents", "incident_alerts",
    "incident_changes", "clusters", "imports", "dead_letters", "integrity",
)
#: exported only when named: vectors are large (a FLOAT[d] per event and model), the rest is
#: model bookkeeping few tools need
ON_REQUEST = (
    "event_vectors", "text_vectors", "fits", "baseline", "models", "labels", "model_runs",
    "evaluations", "schema_version",
)
EXPORTABLE = DEFAULT_TABLES + ON_REQUEST
FORMATS = {
    "parquet": "(FORMAT parquet, COMPRESSION zstd{options})",
    "csv": "(FORMAT csv, HEADER true{options})",
}
#: the share of DuckDB's buffer pool one exported Parquet row group may fill (measured on the
#: OTRF store, one thread: an eighth exported at 64, 256 and 512 MB; 10,000 rows of ~3 KB, about
#: half of a 64 MB pool, did not)
ROW_GROUP_POOL_SHARE = 1 / 8
MIN_ROW_GROUP = 1_024
MAX_ROW_GROUP = 122_880  # DuckDB's own default
_UNITS = {"bytes": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def row_group_rows(pool_bytes: int, row_bytes: float) -> int:
    """Rows per Parquet row group so that one group fills at most `ROW_GROUP_POOL_SHARE` of
    the pool, between `MIN_ROW_GROUP` and `MAX_ROW_GROUP`."""
    rows = int(pool_bytes * ROW_GROUP_POOL_SHARE / max(row_bytes, 1.0))
    return max(MIN_ROW_GROUP, min(MAX_ROW_GROUP, rows))


def parse_size(text: str) -> int:
    """Bytes of a size as DuckDB prints its settings (``244.1 MiB``, ``1.0 GiB``)."""
    number, _, unit = text.strip().partition(" ")
    return int(float(number) * _UNITS.get(unit.strip().lower() or "bytes", 1))


def sql_path(path: Path) -> str:
    """``path`` as a SQL string literal for COPY: absolute, no control characters, quotes
    doubled. Raises UsageError for a path that cannot be written safely this way."""
    text = str(Path(path).resolve())
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise UsageError(f"export: output path {text!r} holds a control character; choose "
                         "another --out")
    return "'" + text.replace("'", "''") + "'"


class ExportQueries:
    def export_tables(self, out_dir: Path, fmt: str, tables: Sequence[str]) -> list[dict[str, Any]]:
        """Write each table to ``out_dir/TABLE.{parquet,csv}``; returns per table its name, rows
        written, file and size, or why it was left out (a table an older database lacks)."""
        if fmt not in FORMATS:
            raise UsageError(f"export: --format {fmt!r}: expected one of {', '.join(FORMATS)}")
        unknown = [t for t in tables if t not in EXPORTABLE]
        if unknown:
            raise UsageError(f"export: --tables: unknown table {', '.join(unknown)}; "
                             f"tables: {', '.join(EXPORTABLE)}")
        out_dir = Path(out_dir)
        results: list[dict[str, Any]] = []
        # CSV writes TIMESTAMPTZ in the session's zone: UTC, like every time this tool prints
        self._run("SET TimeZone = 'UTC'")
        # one writing thread: each holds its own row group (see the module docstring)
        self._run("SET threads = 1")
        pool = parse_size(self._run("SELECT current_setting('memory_limit')")[0][0])
        try:
            for table in tables:
                if not self.has_table(table):
                    results.append({"table": table, "rows": None, "path": None, "bytes": None,
                                    "skipped": "not in this database (an older schema, or no "
                                               "model has stored vectors yet)"})
                    continue
                final = out_dir / f"{table}.{fmt}"
                partial = out_dir / f".{table}.{fmt}.partial"
                options = ""
                if fmt == "parquet":
                    options = f", ROW_GROUP_SIZE {row_group_rows(pool, self._row_bytes(table))}"
                try:
                    rows = self._run(f'COPY (SELECT * FROM "{table}") TO {sql_path(partial)} '
                                     + FORMATS[fmt].format(options=options))
                    os.replace(partial, final)
                finally:
                    if partial.exists():
                        partial.unlink()
                n = int(rows[0][0]) if rows else 0
                size = final.stat().st_size
                log.info("table_exported", table=table, rows=n, path=str(final), bytes=size)
                results.append({"table": table, "rows": n, "path": str(final), "bytes": size,
                                "skipped": None})
        finally:
            self._run("RESET TimeZone")
            self._run("RESET threads")
        return results

    def _row_bytes(self, table: str) -> float:
        """A table's mean row width in bytes as text, from a sample of its rows (1.0 when
        empty): what a row group of it holds before compression, roughly."""
        width = self._run(f'SELECT avg(strlen(CAST(t AS VARCHAR))) FROM '
                          f'(SELECT * FROM "{table}" USING SAMPLE 2000 ROWS) t')[0][0]
        return float(width or 1.0)
