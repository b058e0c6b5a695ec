"""Persistence: the store interface (`plugin.store.base`) and `open_store`, which picks the
implementation a ``--db`` value names: a DuckDB file (one machine) or a DuckLake (many writers)."""

from __future__ import annotations

from pathlib import Path

from plugin.store.alerts import STATUSES, AlertNotFound
from plugin.store.base import EVENT_COLUMNS, DeadLetter, Store, VectorRows, utcnow
from plugin.store.triage import IncidentNotFound

__all__ = ["EVENT_COLUMNS", "STATUSES", "AlertNotFound", "DeadLetter", "IncidentNotFound",
           "Store", "VectorRows", "open_store", "utcnow", "is_out_of_memory",
           "is_disk_full"]


#: the WAL size at which a long-running consumer checkpoints. Rows not yet checkpointed stay in
#: memory, so the consumer's RSS saws up and down by about this much times DuckDB's in-memory
#: overhead: a store-only stream of 200,000 simulated events swung between 214 and 347 MiB at
#: 64MB and between 208 and 269 MiB at 16MB, in the same time (90 s against 88 s); at 4MB the
#: checkpoints cost time (97 s) for no lower level
LONG_RUNNING_CHECKPOINT = "16MB"


def open_store(db: str | Path, *, read_only: bool = False, memory_limit: str = "512MB",
               long_running: bool = False, data_path: str | None = None) -> Store:
    """The store ``db`` names, migrated forward unless read-only: a DuckDB file path, or a
    DuckLake (``ducklake:postgres:...``, ``ducklake:sqlite:PATH``, ``ducklake:PATH.ducklake``)
    whose Parquet files live under ``data_path`` (the `lake_data_path` setting).
    ``long_running``: a consumer that writes for days keeps little unwritten state in memory
    (frequent small checkpoints) instead of a bulk import's few large ones."""
    from plugin.store.duckdb import DuckDBStore
    from plugin.store.lake import LakeStore, is_lake

    if is_lake(db):
        return LakeStore(str(db), data_path=data_path, read_only=read_only,
                         memory_limit=memory_limit)

    return DuckDBStore(db, read_only=read_only, memory_limit=memory_limit,
                       checkpoint_threshold=LONG_RUNNING_CHECKPOINT if long_running else "1GB")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a failure is the store running out of its memory budget (the fix: a larger
    db_memory_limit)."""
    from plugin.store.duckdb import is_out_of_memory as duckdb_oom

    return duckdb_oom(exc)


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failure is a write refused for want of space (the fix: free space, run again)."""
    from plugin.store.duckdb import is_disk_full as duckdb_full

    return duckdb_full(exc)
