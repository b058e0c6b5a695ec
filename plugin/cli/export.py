"""`sysmon-blt export`: a database's tables as Parquet or CSV files for other tools.

Read-only on purpose: the database may be a case's evidence store, and export must neither
migrate nor otherwise touch it; a file another process is writing cannot be opened at all (one
DuckDB writer), and the error says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import structlog

from plugin.cli.common import existing_db
from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")


def parse_tables(value: str | None) -> list[str]:
    """``--tables t1,t2`` as a list in the order given (repeats dropped); the default set when
    not given. Unknown names are a usage error naming every exportable table."""
    from plugin.store.export import DEFAULT_TABLES, EXPORTABLE

    if value is None:
        return list(DEFAULT_TABLES)
    names = list(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if not names:
        raise UsageError("export: --tables is empty; name tables separated by commas")
    unknown = [t for t in names if t not in EXPORTABLE]
    if unknown:
        raise UsageError(f"export: --tables: unknown table {', '.join(unknown)}; "
                         f"exportable: {', '.join(EXPORTABLE)}")
    return names


def cmd_export(args: argparse.Namespace) -> int:
    from plugin.store import open_store

    cfg = existing_db("export", args)
    tables = parse_tables(args.tables)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"export: --out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"export: cannot create --out {out}: {exc.strerror or exc}") from exc
    store = open_store(cfg.db, data_path=cfg.lake_data_path,
                       read_only=True, memory_limit=cfg.db_memory_limit)
    try:
        results = store.export_tables(out, args.format, tables)
    finally:
        store.close()
    log.info("exported", db=cfg.db, out=str(out), format=args.format,
             tables=sum(1 for r in results if r["rows"] is not None))
    if args.json:
        print(json.dumps({"db": cfg.db, "out": str(out), "format": args.format,
                          "tables": results}))
    else:
        print(format_export(results, cfg.db, out, args.format))
    return 0


def format_export(results: list[dict], db: str, out: Path, fmt: str) -> str:
    """One line per table: rows written and the file, or why it was left out; then the total."""
    width = max((len(r["table"]) for r in results), default=0)
    lines = []
    for r in results:
        if r["rows"] is None:
            lines.append(f"{r['table']:<{width}}  skipped: {r['skipped']}")
        else:
            lines.append(f"{r['table']:<{width}}  {r['rows']:>12,} rows  {r['path']}  "
                         f"({_size(r['bytes'])})")
    done = [r for r in results if r["rows"] is not None]
    lines.append(f"{len(done)} table(s), {sum(r['rows'] for r in done):,} rows from {db} "
                 f"to {out} ({fmt})")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"
