"""The queries of the comparison report (`sysmon-blt report`), as a mixin of the store.

Why a mixin: the report needs a dozen read-only questions answered (which models have vectors,
a seeded event sample, both models' assignments side by side, labels, eval runs, throughput),
and SQL lives only in ``plugin/store``. Keeping them here rather than in ``duckdb.py`` keeps the
writer's file about writing; ``Store`` includes this class, so every store answers them.
Every method returns plain Python values or numpy arrays, never DuckDB objects, so the report
does not depend on DuckDB.

Read-only opens do not migrate, so an older file may lack the tables of migrations 3 and 4:
callers ask :meth:`ReportQueries.has_table` before the questions about those tables.
"""

from __future__ import annotations

from datetime import datetime

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

__all__ = ["AssignmentPairs", "ModelInfo", "ReportQueries", "SampledEvents"]


@dataclass
class ModelInfo:
    """One model as stored: the version the report uses and how much it covers."""

    name: str
    version: str  # the version compared: the one with the most stored vectors
    versions: list[str]  # every version with vectors, most vectors first
    dim: int
    texts: int  # distinct texts with a vector of `version`
    events: int  # events whose text has one


@dataclass
class SampledEvents:
    """Events in a seeded random order with their texts' vectors, each distinct text's once
    (vectors are stored per text, and a sample repeats frequent texts many times)."""

    population: int  # events eligible for the sample
    keys: list[str]
    hashes: list[str]  # the text hash of each event
    text_rows: np.ndarray  # (len(keys),) int64: the row of each event's text in `vectors`
    vectors: dict[str, np.ndarray]  # model -> (distinct texts, dim) float32, as stored


@dataclass
class AssignmentPairs:
    """Two models' assignments of the events both scored, in event-key order, and what each
    model assigned overall."""

    assigned: dict[str, int]  # model -> events it has an assignment for
    fit_versions: dict[str, list[int]]  # model -> fit versions among its assignments, ascending
    outliers: dict[str, int]  # model -> outliers among all its assignments
    clusters: tuple[np.ndarray, np.ndarray]  # int64 cluster ids, -1 for none
    is_outlier: tuple[np.ndarray, np.ndarray]  # bool
    scores: tuple[np.ndarray, np.ndarray]  # float64


class ReportQueries:
    """The report's questions to the database; mixed into :class:`plugin.store.duckdb.Store`."""

    # provided by the class this is mixed into
    con: duckdb.DuckDBPyConnection
    _run: Callable[..., list]
    read_vectors: Callable[[str, str, list[str]], dict[str, np.ndarray]]

    def has_table(self, name: str) -> bool:
        """Whether the database has table ``name`` (an unmigrated older file may not)."""
        rows = self._run(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])
        return bool(rows[0][0])

    def event_count(self) -> int:
        """All stored events."""
        return int(self._run("SELECT count(*) FROM events")[0][0])

    def first_stored_at(self) -> datetime | None:
        """When the oldest stored event was written (None for an empty store): a consumer's
        learning period counts from there, across restarts."""
        return self._run("SELECT min(imported_at) FROM events")[0][0]

    def stored_models(self) -> dict[str, ModelInfo]:
        """Every model with vectors in ``text_vectors``, by model name.

        When a model has vectors of several versions (a rescore in progress, an old model kept),
        the version with the most vectors is the one compared (ties: the most recent); the others
        are listed.
        """
        if not self.has_table("text_vectors"):
            return {}
        rows = self._run(
            "SELECT model, model_version, count(*) AS n, max(created) AS last FROM text_vectors "
            "GROUP BY model, model_version ORDER BY model, n DESC, last DESC")
        by_model: dict[str, list[tuple[str, int]]] = {}
        for model, version, n, _ in rows:
            by_model.setdefault(model, []).append((version, int(n)))
        out: dict[str, ModelInfo] = {}
        for model, versions in by_model.items():
            version, texts = versions[0]
            dim_row = self._run(
                "SELECT len(vector) FROM text_vectors WHERE model = ? AND model_version = ? "
                "LIMIT 1",
                [model, version])
            events = self._run(
                "SELECT count(*) FROM events e WHERE e.text_hash IN (SELECT text_hash FROM "
                "text_vectors WHERE model = ? AND model_version = ?)", [model, version])[0][0]
            out[model] = ModelInfo(model, version, [v for v, _ in versions],
                                   int(dim_row[0][0]) if dim_row else 0, texts, int(events))
        return out

    def sample_event_vectors(self, models: Sequence[ModelInfo], n: int, seed: int) -> SampledEvents:
        """Up to ``n`` events whose text has a vector of every given model, in a seeded order.

        The order is ``hash(event_key || seed)`` inside DuckDB: deterministic for a seed,
        independent of scan order and thread count, any prefix of it is itself a uniform sample,
        and the database never ships every event key to Python.
        """
        where = " AND ".join(
            "e.text_hash IN (SELECT text_hash FROM text_vectors "
            "WHERE model = ? AND model_version = ?)"
            for _ in models)
        params: list[Any] = [p for m in models for p in (m.name, m.version)]
        population = int(self._run(f"SELECT count(*) FROM events e WHERE {where}", params)[0][0])
        rows = self._run(
            f"SELECT e.event_key, e.text_hash FROM events e WHERE {where} "
            "ORDER BY hash(e.event_key || ?), e.event_key LIMIT ?", params + [f"|{seed}", int(n)])
        keys, hashes = [r[0] for r in rows], [r[1] for r in rows]
        distinct = list(dict.fromkeys(hashes))
        index = {h: i for i, h in enumerate(distinct)}
        vectors: dict[str, np.ndarray] = {}
        for m in models:
            got = self.read_vectors(m.name, m.version, distinct)
            vectors[m.name] = (np.stack([got[h] for h in distinct]).astype(np.float32) if distinct
                               else np.zeros((0, m.dim), dtype=np.float32))
        return SampledEvents(population, keys, hashes,
                             np.asarray([index[h] for h in hashes], dtype=np.int64), vectors)

    def model_agreement(self, primary: str, shadow: str) -> AssignmentPairs:
        """Both models' cluster, outlier flag and score for every event both assigned."""
        models = [primary, shadow]
        assigned = dict(self._run(
            "SELECT model, count(*) FROM assignments WHERE model IN (?, ?) GROUP BY model", models))
        cols = self.con.execute(
            "SELECT coalesce(a.cluster, -1) AS ca, coalesce(b.cluster, -1) AS cb, "
            "a.is_outlier AS oa, b.is_outlier AS ob, a.score AS sa, b.score AS sb "
            "FROM assignments a JOIN assignments b ON a.event_key = b.event_key "
            "WHERE a.model = ? AND b.model = ? ORDER BY a.event_key", models).fetchnumpy()
        versions = dict(self._run(
            "SELECT model, list(DISTINCT version ORDER BY version) FROM assignments "
            "WHERE model IN (?, ?) GROUP BY model", models))
        outliers = dict(self._run(
            "SELECT model, count(*) FILTER (WHERE is_outlier) FROM assignments "
            "WHERE model IN (?, ?) GROUP BY model", models))
        return AssignmentPairs(
            assigned={m: int(assigned[m]) for m in models if m in assigned},
            fit_versions={m: [int(v) for v in versions.get(m, [])] for m in models},
            outliers={m: int(outliers.get(m, 0)) for m in models},
            clusters=(np.asarray(cols["ca"], np.int64), np.asarray(cols["cb"], np.int64)),
            is_outlier=(np.asarray(cols["oa"], bool), np.asarray(cols["ob"], bool)),
            scores=(np.asarray(cols["sa"], np.float64), np.asarray(cols["sb"], np.float64)))

    def label_count(self) -> int:
        """Labelled events (rows of ``labels``)."""
        return int(self._run("SELECT count(*) FROM labels")[0][0])

    def label_rows(self, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score, is_outlier, is_attack) of the labelled events the model assigned."""
        cols = self.con.execute(
            "SELECT a.score, a.is_outlier, l.is_attack FROM labels l JOIN assignments a "
            "ON a.event_key = l.event_key WHERE a.model = ? ORDER BY l.event_key",
            [model]).fetchnumpy()
        return (np.asarray(cols["score"], np.float64), np.asarray(cols["is_outlier"], bool),
                np.asarray(cols["is_attack"], bool))

    def evaluations(self) -> list[dict[str, Any]]:
        """Stored `eval` runs, oldest first: ``created``, and ``spec`` and ``results`` decoded
        from JSON (kept as text where a row holds something else)."""
        rows = self._run("SELECT created, spec, results FROM evaluations ORDER BY created")
        return [{"created": c, "spec": _json(s), "results": _json(r)} for c, s, r in rows]

    def model_runs(self) -> list[dict[str, Any]]:
        """Every ``model_runs`` row as a column -> value dict, ordered by run start, then model."""
        cur = self.con.execute("SELECT * FROM model_runs ORDER BY run_started, model")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def _json(value: Any) -> Any:
    """A JSON column's value as Python; a string that is not JSON stays a string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
