"""Tables out for other tools (`sysmon-blt export`): Parquet or CSV files, one per table.

DuckDB's ``COPY (SELECT ...) TO 'file'`` streams a table to disk in row groups, so exporting a
case of millions of events never holds a table in memory. COPY takes no bound parameter for the
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
    "parquet": "(FORMAT parquet, COMPRESSION zstd)",
    "csv": "(FORMAT csv, HEADER true)",
}


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
        try:
            for table in tables:
                if not self.has_table(table):
                    results.append({"table": table, "rows": None, "path": None, "bytes": None,
                                    "skipped": "not in this database (an older schema, or no "
                                               "model has stored vectors yet)"})
                    continue
                final = out_dir / f"{table}.{fmt}"
                partial = out_dir / f".{table}.{fmt}.partial"
                try:
                    rows = self._run(f'COPY (SELECT * FROM "{table}") TO {sql_path(partial)} '
                                     f"{FORMATS[fmt]}")
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
        return results
