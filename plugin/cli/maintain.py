"""`sysmon-blt maintain`: the upkeep a store needs now and then, said plainly.

A DuckLake gathers small files (one per commit, many consumers committing), rows held inline in
its catalog, old snapshots and, rarely, a duplicate row that two writers let in at the same
moment: `LakeStore.maintain` takes care of all of it, beside running writers. A DuckDB file
needs none of that (its keys are enforced, and it has no snapshots or small files): there the
command checkpoints (folds the write-ahead log into the file, and lets DuckDB reuse the blocks
of deleted rows) and says so, instead of pretending to do more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import structlog

from plugin.cli.common import existing_db
from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")

#: what each count of `LakeStore.maintain` means, in the order a person reads them
_LAKE_LABELS = {
    "duplicate_events": "duplicate events removed",
    "duplicate_text_vectors": "duplicate vectors removed",
    "duplicate_assignments": "duplicate scores removed",
    "duplicate_incident_alerts": "duplicate incident links removed",
    "rows_flushed": "inlined rows written to Parquet",
    "files_merged": "small files merged",
    "files_rewritten": "files rewritten without deleted rows",
    "snapshots_expired": "snapshots expired",
    "files_deleted": "unreferenced files deleted",
}


def cmd_maintain(args: argparse.Namespace) -> int:
    from plugin.store import open_store
    from plugin.store.lake import LakeStore

    if args.older_than < 0:
        raise UsageError("maintain: --older-than must be 0 or more days")
    cfg = existing_db("maintain", args)
    store = open_store(cfg.db, data_path=cfg.lake_data_path, memory_limit=cfg.db_memory_limit)
    try:
        if isinstance(store, LakeStore):
            out = {"db": cfg.db, "kind": "ducklake", "older_than_days": args.older_than,
                   "done": store.maintain(older_than_days=args.older_than)}
        else:
            out = _checkpoint(store, cfg.db)
    finally:
        store.close()
    log.info("maintained", **{k: v for k, v in out.items() if k != "done"})
    if args.json:
        print(json.dumps(out))
    elif out["kind"] == "ducklake":
        print(f"maintained DuckLake {cfg.db}")
        width = max(len(v) for v in _LAKE_LABELS.values())
        for key, n in out["done"].items():
            print(f"  {_LAKE_LABELS.get(key, key):<{width}}  {n:,}")
        print(f"  (snapshots younger than {args.older_than:g} days stay, and the files they "
              "reference: time travel and running readers keep working)")
    else:
        print(f"checkpointed DuckDB file {cfg.db}: {out['bytes_before']:,} -> "
              f"{out['bytes_after']:,} bytes (write-ahead log {out['wal_bytes_before']:,} -> "
              f"{out['wal_bytes_after']:,}). {out['note']}")
    return 0


def _checkpoint(store, db: str) -> dict:
    """CHECKPOINT a DuckDB file; its size and its write-ahead log's, before and after."""
    path, wal = Path(db), Path(db + ".wal")

    def size(p: Path) -> int:
        return p.stat().st_size if p.exists() else 0

    before, wal_before = size(path), size(wal)
    store.con.execute("CHECKPOINT").fetchall()
    return {"db": db, "kind": "duckdb", "checkpointed": True,
            "bytes_before": before, "bytes_after": size(path),
            "wal_bytes_before": wal_before, "wal_bytes_after": size(wal),
            "note": "Nothing else to maintain: a DuckDB file enforces its keys (no duplicates) "
                    "and keeps no snapshots or small files; --older-than applies to a DuckLake "
                    "only. Later writes reuse the space of deleted rows; the file does not "
                    "shrink (DuckDB's COPY FROM DATABASE into a new file compacts it)."}
