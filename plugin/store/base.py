"""The store interface: everything the rest of sysmon-blt asks of persistence, named for what it
answers. Nothing outside ``plugin/store`` sees SQL or DuckDB; it sees this.

The DuckDB file (`plugin.store.duckdb`) is the first implementation; a DuckLake (many writers,
catalog plus Parquet) comes beside it with the same tables and the same questions. The row types
that cross the interface (what a batch writes) live here too, so callers need no implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from plugin.normalize.normalizer import NormalizedEvent
from plugin.store.events import Appended, EnrichState
from plugin.store.fits import BaselineText, StoredClusters
from plugin.store.reports import AssignmentPairs, ModelInfo, SampledEvents
from plugin.store.triage import TriageFilter

#: the columns of an `events` row, in the order a batch hands them to `write_batch`
EVENT_COLUMNS = (
    "event_key", "source", "position", "event_id", "computer", "user_name", "ts", "record_id",
    "channel", "shape", "normalized", "text_hash", "fields", "raw", "imported_at",
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class VectorRows:
    """New vectors of one model for distinct canonical texts (rows of `text_vectors`)."""

    model: str
    model_version: str
    text_hashes: list[str]
    vectors: np.ndarray  # (len(text_hashes), dim) float32
    #: per text, the model's window surprisal summary (the BLT's, `plugin.models.blt.surprisal`),
    #: stored so scoring a text read back needs no second entropy pass; None: the model has none
    window_bits: Sequence[float | None] | None = None


@dataclass
class DeadLetter:
    source: str
    position: int | None
    reason: str
    payload: str | None


class Store(ABC):
    """A sysmon-blt database. ``path`` names it as the user gave it (for messages)."""

    path: str

    # -- schema and lifetime -----------------------------------------------------------------
    @abstractmethod
    def schema_version(self) -> int:
        """The newest migration the database holds (0 for an empty one)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def for_thread(self) -> "Store":
        """The same store for another thread (its own connection); close it when done."""

    # -- the sink ----------------------------------------------------------------------------
    @abstractmethod
    def write_batch(self, events: dict[str, list[Any]], dead: Sequence[DeadLetter],
                    vectors: Sequence[VectorRows] = (), assignments: Sequence[dict] = (),
                    alerts: Sequence[dict] = (), *, incidents: Sequence[dict] = ()) -> int:
        """One batch, atomically: events (column lists, idempotent by event_key), dead letters,
        new text vectors, assignments (replacing older ones, keeping an incident link), alerts
        (folding twins), incidents (`plugin.pipeline.incidents` rows: counting only what this
        write links anew, so a replay counts nothing twice). Returns how many events were new."""

    @contextmanager
    def rewriting(self) -> Iterator[None]:
        """Around a pass that writes every stored event's scores again (a rescore): a store
        that keeps unwritten changes in memory bounds them here. Nothing to do by default."""
        yield

    # -- models and vectors ------------------------------------------------------------------
    @abstractmethod
    def register_model(self, model: str, version: str, dim: int, directory: str | None) -> None: ...

    @abstractmethod
    def read_vectors(self, model: str, version: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors by text hash (absent ones left out); safe beside a writing sink."""

    @abstractmethod
    def read_window_bits(self, model: str, version: str, hashes: list[str]) -> dict[str, float]:
        """Stored window surprisal by text hash (texts stored without one left out)."""

    @abstractmethod
    def vector_hashes(self, model: str, version: str) -> set[str]: ...

    # -- imports (chain of custody) and runs -------------------------------------------------
    @abstractmethod
    def completed_import(self, sha256: str) -> dict[str, Any] | None:
        """The newest complete import of an input with this SHA-256: path, sysmon_events,
        records; None if there is none."""

    @abstractmethod
    def record_import(self, row: dict[str, Any]) -> None: ...

    @abstractmethod
    def record_integrity(self, import_path: str, sha256: str | None,
                         rows: Sequence[dict[str, Any]]) -> None:
        """An input's integrity findings (`plugin.detect.integrity.Finding` fields), replacing
        any of the same path and SHA-256: written once per input, before its `imports` row."""

    @abstractmethod
    def integrity_findings(self, import_path: str | None = None) -> list[dict[str, Any]]:
        """Integrity rows, JSON columns parsed; one input's (an archive's: its members' too), or
        all. Empty for a database from before the `integrity` table."""

    @abstractmethod
    def record_model_runs(self, command: str, started: datetime, run_seconds: float,
                          run_events: int, embed_stats: Sequence[dict]) -> None: ...

    # -- stored events -----------------------------------------------------------------------
    @abstractmethod
    def events_in_log_order(self, batch_size: int = 5000,
                            text_hashes: Sequence[str] | None = None) -> Iterator[list[NormalizedEvent]]: ...

    @abstractmethod
    def events_lacking_vectors(self, model: str, version: str) -> int: ...

    @abstractmethod
    def texts_by_hash(self, hashes: list[str]) -> dict[str, str]: ...

    @abstractmethod
    def process_creation(self, guid: str) -> dict | None: ...

    @abstractmethod
    def nearest_events(self, model: str, version: str, vector: np.ndarray, k: int = 5,
                       exclude_event: str | None = None,
                       candidates: Sequence[str] | None = None) -> list[dict]: ...

    @abstractmethod
    def enrich_state(self, events_after: int, vectors_after: int,
                     event_key: str | None = None, ts: datetime | None = None) -> EnrichState:
        """Row counts (and whether ``event_key``, an event of time ``ts``, is stored): how the
        enricher's in-memory copies learn that the store changed."""

    @abstractmethod
    def text_vectors_after(self, model: str, version: str, after: int) -> Appended: ...

    @abstractmethod
    def creations_after(self, after: int) -> Appended: ...

    @abstractmethod
    def assignment_details(self, model: str, event_keys: Sequence[str]) -> list[dict]: ...

    # -- fits and evaluations ----------------------------------------------------------------
    @abstractmethod
    def latest_fit(self, model: str, model_version: str) -> tuple[int, dict] | None: ...

    @abstractmethod
    def fit_clusters(self, model: str, version: int) -> StoredClusters: ...

    @abstractmethod
    def fit_baseline(self, model: str, version: int) -> list[tuple[str, int]]: ...

    @abstractmethod
    def baseline_candidates(self, model: str, model_version: str,
                            flags_of: str) -> list[BaselineText]: ...

    @abstractmethod
    def record_shipped_fit(self, model: str, model_version: str, clusters: StoredClusters,
                           scorer: str, meta: dict) -> None: ...

    @abstractmethod
    def save_fit(self, model: str, model_version: str, scorer: str, params: dict,
                 clusters: StoredClusters, baseline: Sequence[tuple[str, int]]) -> int: ...

    @abstractmethod
    def keep_evaluation(self, event_keys: Sequence[str], is_attack: Sequence[bool], how: str,
                        spec: dict, results: dict) -> None: ...

    # -- triage ------------------------------------------------------------------------------
    @abstractmethod
    def list_alerts(self, *, status: str | None = None, host: str | None = None,
                    since: datetime | None = None, top: int | None = 20) -> list[dict[str, Any]]: ...

    @abstractmethod
    def alert_states(self, alert_ids: list[str]) -> dict[str, tuple[str, datetime]]: ...

    @abstractmethod
    def reset_alert_counts(self, models: list[str]) -> None: ...

    @abstractmethod
    def drop_unconfirmed_alerts(self, models: list[str]) -> int: ...

    @abstractmethod
    def alert_count(self, status: str | None = None) -> int: ...

    @abstractmethod
    def reset_incidents(self, models: list[str]) -> None:
        """Unlink and empty these models' incidents before a rescore rebuilds them."""

    @abstractmethod
    def list_incidents(self, *, top: int | None = 20, host: str | None = None,
                       status: str | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def incident_count(self) -> int: ...

    @abstractmethod
    def incidents_of_alerts(self, alert_ids: Sequence[str]) -> dict[str, list[str]]:
        """The incident ids each alert's events belong to, by alert id."""

    @abstractmethod
    def resolve_alert_id(self, prefix: str) -> str: ...

    @abstractmethod
    def alert(self, alert_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def mark_alert(self, alert_id: str, status: str, note: str | None, analyst: str) -> dict[str, Any]: ...

    @abstractmethod
    def resolve_incident_id(self, prefix: str) -> str:
        """The full id of the incident a unique prefix names; IncidentNotFound otherwise."""

    @abstractmethod
    def mark_incident(self, incident_id: str, status: str, note: str | None,
                      analyst: str) -> dict[str, Any]:
        """The incident's status and each of its alerts', every change kept with who and when."""

    @abstractmethod
    def incident_history(self, incident_id: str) -> list[dict[str, Any]]: ...

    # -- the triage page ---------------------------------------------------------------------
    @abstractmethod
    def triage_alerts(self, f: TriageFilter | None = None, *, outside_incidents: bool = True,
                      top: int | None = 200) -> list[dict[str, Any]]:
        """Alerts by score, filtered; by default those outside every incident."""

    @abstractmethod
    def triage_incidents(self, f: TriageFilter | None = None, *,
                         top: int | None = 100) -> list[dict[str, Any]]: ...

    @abstractmethod
    def incident(self, incident_id: str, *, max_events: int = 500) -> dict[str, Any]:
        """One incident with its alerts and events; IncidentNotFound when none (or several)."""

    @abstractmethod
    def alert_hosts(self, alert_id: str) -> list[dict[str, Any]]:
        """Per host, the events carrying the alert's canonical text."""

    # -- retention ---------------------------------------------------------------------------
    @abstractmethod
    def prune(self, before: datetime) -> dict[str, int]: ...

    # -- export ------------------------------------------------------------------------------
    @abstractmethod
    def export_tables(self, out_dir: Path, fmt: str, tables: Sequence[str]) -> list[dict[str, Any]]:
        """Stream tables to ``out_dir/TABLE.{parquet,csv}`` (`plugin.store.export`); per table:
        name, rows, path, bytes, or why it was skipped."""

    # -- the comparison report ---------------------------------------------------------------
    @abstractmethod
    def has_table(self, name: str) -> bool: ...

    @abstractmethod
    def event_count(self) -> int: ...

    @abstractmethod
    def first_stored_at(self) -> datetime | None: ...

    @abstractmethod
    def stored_models(self) -> dict[str, ModelInfo]: ...

    @abstractmethod
    def sample_event_vectors(self, models: Sequence[ModelInfo], n: int, seed: int) -> SampledEvents: ...

    @abstractmethod
    def model_agreement(self, primary: str, shadow: str) -> AssignmentPairs: ...

    @abstractmethod
    def label_count(self) -> int: ...

    @abstractmethod
    def label_rows(self, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    @abstractmethod
    def evaluations(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def model_runs(self) -> list[dict[str, Any]]: ...
