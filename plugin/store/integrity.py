"""Integrity findings of forensic imports (`integrity`): written once per input with its custody,
read by the import summary and the triage page.

A mixin of the store (runs on ``self.con``). Rows are replaced per input path and SHA-256, the
way an input's custody is identified: a resumed import writes an input's findings again without
adding a second set, while the same path with other bytes (a log collected again later) keeps
both, as `imports` does.
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson

#: the `integrity` columns this release writes, in table order (JSON columns marked)
INTEGRITY_COLUMNS = (
    "computer", "channel", "first_ts", "last_ts", "records", "record_id_gaps", "log_clears",
    "sysmon_changes", "import_path", "sha256", "gaps", "missing_records", "first_record_id",
    "last_record_id", "duplicate_record_ids", "records_without_id", "log_clear_count",
    "sysmon_change_count", "recorded_at",
)
_JSON = frozenset({"record_id_gaps", "log_clears", "sysmon_changes"})


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class IntegrityQueries:
    def record_integrity(self, import_path: str, sha256: str | None,
                         rows: Sequence[dict[str, Any]]) -> None:
        """Replace the findings of one input (path and SHA-256) with ``rows``, atomically."""
        from plugin.store.base import utcnow

        now = utcnow()
        self.con.begin()
        try:
            self._run("DELETE FROM integrity WHERE import_path = ? "
                      "AND sha256 IS NOT DISTINCT FROM ?", [import_path, sha256])
            if rows:
                values = []
                for r in rows:
                    full = {**r, "import_path": import_path, "sha256": sha256, "recorded_at": now}
                    values.append([_dumps(full.get(c) or []) if c in _JSON else full.get(c)
                                   for c in INTEGRITY_COLUMNS])
                self.con.executemany(
                    f"INSERT INTO integrity ({', '.join(INTEGRITY_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(INTEGRITY_COLUMNS))})", values)
            self.con.commit()
        except Exception:
            self._rollback()
            raise

    def integrity_findings(self, import_path: str | None = None) -> list[dict[str, Any]]:
        """Integrity rows as dicts (JSON columns parsed, times as aware datetimes), by path,
        computer and channel. ``import_path``: one input's rows; an archive's path also gives its
        members' (``PATH!member``). A database from before migration 7 has none (read-only
        opens do not migrate). Whether a row is alarming: `plugin.detect.integrity.is_alarming`."""
        if not self.has_table("integrity"):
            return []
        where, params = "", []
        if import_path is not None:
            where = "WHERE import_path = ? OR starts_with(import_path, ?)"
            params = [import_path, import_path + "!"]
        cur = self.con.cursor()  # beside a writing sink, as the service reads
        try:
            rel = cur.execute(
                f"SELECT {', '.join(INTEGRITY_COLUMNS)} FROM integrity {where} "
                "ORDER BY import_path, computer NULLS FIRST, channel NULLS FIRST", params)
            names = [d[0] for d in rel.description]
            rows = rel.fetchall()
        finally:
            cur.close()
        out = []
        for row in rows:
            d = dict(zip(names, row))
            for c in _JSON:
                d[c] = orjson.loads(d[c]) if d[c] is not None else []
            out.append(d)
        return out
