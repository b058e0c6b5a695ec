"""Persistence: the store interface (`plugin.store.base`) and `open_store`, which picks the
implementation a ``--db`` value names. Today that is a DuckDB file; a DuckLake joins it here."""

from __future__ import annotations

from pathlib import Path

from plugin.store.alerts import STATUSES, AlertNotFound
from plugin.store.base import EVENT_COLUMNS, DeadLetter, Store, VectorRows, utcnow
from plugin.store.triage import IncidentNotFound

__all__ = ["EVENT_COLUMNS", "STATUSES", "AlertNotFound", "DeadLetter", "IncidentNotFound",
           "Store", "VectorRows", "open_store", "utcnow", "is_out_of_memory"]


def open_store(db: str | Path, *, read_only: bool = False, memory_limit: str = "512MB",
               long_running: bool = False) -> Store:
    """The store ``db`` names (a DuckDB file path), migrated forward unless read-only.
    ``long_running``: a consumer that writes for days keeps little unwritten state in memory
    (frequent small checkpoints) instead of a bulk import's few large ones."""
    from plugin.store.duckdb import DuckDBStore

    return DuckDBStore(db, read_only=read_only, memory_limit=memory_limit,
                       checkpoint_threshold="64MB" if long_running else "1GB")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a failure is the store running out of its memory budget (the fix: a larger
    db_memory_limit)."""
    from plugin.store.duckdb import is_out_of_memory as duckdb_oom

    return duckdb_oom(exc)
