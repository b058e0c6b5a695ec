"""What fits learned, and what evaluations found: the `fits`, `clusters`, `baseline`, `labels` and
`evaluations` tables behind methods named for what they answer.

A mixin of the store (runs on ``self.con``). Every write here is one transaction: a fit is either
stored whole (fit row, clusters, baseline texts) or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa


@dataclass
class StoredClusters:
    """One fit's clusters, as stored: rows ordered by cluster number."""

    centroids: np.ndarray  # (k, d) float32
    thresholds: np.ndarray  # (k,) float32
    sizes: np.ndarray  # (k,) int64
    medoids: list[str]


@dataclass
class BaselineText:
    """A distinct stored text with a vector of the model: candidate for a fit's baseline."""

    text_hash: str
    events: int
    normalized: str
    was_flagged: bool  # flagged by the current fit, and not marked a false positive


class FitQueries:
    def latest_fit(self, model: str, model_version: str) -> tuple[int, dict] | None:
        """(version, params) of the newest local fit of this model version; None before any."""
        rows = self._run(
            "SELECT version, params FROM fits WHERE model = ? AND model_version = ? "
            "AND origin = 'fit' ORDER BY version DESC LIMIT 1", [model, model_version])
        if not rows:
            return None
        return int(rows[0][0]), json.loads(rows[0][1] or "{}")

    def fit_clusters(self, model: str, version: int) -> StoredClusters:
        rows = self._run(
            "SELECT cluster, centroid, threshold, size, medoid FROM clusters WHERE model = ? AND "
            "version = ? ORDER BY cluster", [model, version])
        return StoredClusters(np.array([r[1] for r in rows], dtype=np.float32),
                              np.array([r[2] for r in rows], dtype=np.float32),
                              np.array([r[3] for r in rows], dtype=np.int64),
                              [r[4] for r in rows])

    def fit_baseline(self, model: str, version: int) -> list[tuple[str, int]]:
        """(text_hash, event count) of the texts a fit learned as normal."""
        return [(h, int(w)) for h, w in self._run(
            "SELECT text_hash, weight FROM baseline WHERE model = ? AND version = ?",
            [model, version])]

    def baseline_candidates(self, model: str, model_version: str,
                            flags_of: str) -> list[BaselineText]:
        """Every distinct stored text with a vector of this model version, with its event count
        and whether ``flags_of``'s current scores flag it (an alert marked false_positive
        clears the flag), ordered by text hash."""
        rows = self._run(
            """
            WITH flagged AS (
                SELECT DISTINCT e.text_hash FROM assignments a JOIN events e USING (event_key)
                WHERE a.model = ? AND a.is_outlier
                  AND e.text_hash NOT IN (
                      SELECT e2.text_hash FROM alerts al JOIN events e2 USING (event_key)
                      WHERE al.model = ? AND al.status = 'false_positive')
            )
            SELECT e.text_hash, count(*) AS n, any_value(e.normalized),
                   bool_or(e.text_hash IN (SELECT text_hash FROM flagged)) AS was_flagged
            FROM events e JOIN text_vectors v
              ON v.text_hash = e.text_hash AND v.model = ? AND v.model_version = ?
            GROUP BY e.text_hash ORDER BY e.text_hash
            """, [flags_of, flags_of, model, model_version])
        return [BaselineText(h, int(n), text, bool(f)) for h, n, text, f in rows]

    def record_shipped_fit(self, model: str, model_version: str, clusters: StoredClusters,
                           scorer: str, meta: dict) -> None:
        """Record a model directory's reference clusters as version 0 (once per model)."""
        if self._run("SELECT 1 FROM fits WHERE model = ? AND version = 0", [model]):
            return
        self.con.begin()
        try:
            self._claim_key("fits")
            self._run("INSERT INTO fits VALUES (?, ?, 0, ?, 'shipped', ?, NULL, ?)",
                      [model, model_version, _now(), scorer, json.dumps(meta)])
            for i in range(clusters.centroids.shape[0]):
                self._run("INSERT INTO clusters VALUES (?, ?, 0, ?, ?, ?, ?, '')",
                          [model, model_version, i, clusters.centroids[i].tolist(),
                           float(clusters.thresholds[i]), int(clusters.sizes[i])])
            self.con.commit()
        except Exception:
            self._rollback()
            raise

    def save_fit(self, model: str, model_version: str, scorer: str, params: dict,
                 clusters: StoredClusters, baseline: Sequence[tuple[str, int]]) -> int:
        """Store a new fit whole (fit row, clusters, baseline texts); returns its version."""
        self.con.begin()
        try:
            self._claim_key("fits")
            version = int(self._run("SELECT coalesce(max(version), 0) + 1 FROM fits "
                                    "WHERE model = ?", [model])[0][0])
            events = int(sum(w for _, w in baseline))
            self._run("INSERT INTO fits VALUES (?, ?, ?, ?, 'fit', ?, ?, ?)",
                      [model, model_version, version, _now(), scorer, events, json.dumps(params)])
            for i in range(clusters.centroids.shape[0]):
                self._run("INSERT INTO clusters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          [model, model_version, version, i, clusters.centroids[i].tolist(),
                           float(clusters.thresholds[i]), int(clusters.sizes[i]),
                           clusters.medoids[i]])
            self.con.register("_baseline", pa.table({
                "model": [model] * len(baseline), "version": [version] * len(baseline),
                "text_hash": [h for h, _ in baseline],
                "weight": pa.array([w for _, w in baseline], pa.int64())}))
            self._run("INSERT INTO baseline SELECT * FROM _baseline")
            self.con.unregister("_baseline")
            self.con.commit()
        except Exception:
            self._rollback()
            raise
        return version

    def keep_evaluation(self, event_keys: Sequence[str], is_attack: Sequence[bool], how: str,
                        spec: dict, results: dict) -> None:
        """An evaluation's labels (one per test event, replacing older ones) and its results,
        kept for `report`."""
        self.con.begin()
        try:
            self.con.register("_labels", pa.table({"event_key": list(event_keys),
                                                   "is_attack": [bool(a) for a in is_attack],
                                                   "source": [how] * len(event_keys)}))
            self._replace_labels("_labels")
            self.con.unregister("_labels")
            self._run("INSERT INTO evaluations VALUES (?, ?, ?)",
                      [_now(), json.dumps(spec), json.dumps(results)])
            self.con.commit()
        except Exception:
            self._rollback()
            raise


    def _claim_key(self, table: str) -> None:
        """Before creating a key of ``table`` (a fit version): nothing in a DuckDB file, whose
        primary key refuses a second one; a DuckLake makes concurrent creators conflict."""

    def _replace_labels(self, table: str) -> None:
        """Labels of ``table`` replace older labels of the same events."""
        self._run(f"INSERT OR REPLACE INTO labels SELECT * FROM {table}")


def _now() -> datetime:
    return datetime.now(timezone.utc)
