"""Alert enrichment: an alert in any supported shape -> the same JSON plus a `sysmon_blt` block.

The block (DESIGN.md): model, model_version, cluster, score, is_outlier, explanation (nearest
cluster and medoid, score against threshold, surprising spans, process lineage) and the 5 nearest
stored events by cosine similarity (event_key, computer, ts, similarity, normalized). The alert
goes through the same normalize -> embed -> score path as an imported event.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from plugin.detect.lineage import guid
from plugin.detect.lineage import lineage as walk_lineage
from plugin.normalize.shapes import BadRecord, map_document
from plugin.normalize.text import CanonicalText
from plugin.pipeline.score import TextScore
from plugin.store.duckdb import Store


def lineage(store: Store, fields: dict) -> list[dict]:
    """Ancestors by ParentProcessGuid, as far as the stored process-creation events reach."""
    return walk_lineage(fields, lambda g: _process(store, g))


def _process(store: Store, g: str | None) -> dict | None:
    if not g:
        return None
    rows = store.con.execute(
        "SELECT event_key, ts, json_extract_string(fields, '$.Image'), "
        "json_extract_string(fields, '$.CommandLine'), json_extract_string(fields, '$.ParentProcessGuid') "
        "FROM events WHERE event_id = 1 AND lower(trim(both '{}' FROM "
        "json_extract_string(fields, '$.ProcessGuid'))) = ? LIMIT 1", [g]).fetchall()
    if not rows:
        return None
    key, ts, image, cmd, parent = rows[0]
    return {"process_guid": g, "event_key": key, "ts": ts.isoformat() if ts else None,
            "image": image, "command_line": cmd, "parent_guid": guid(parent)}


def nearest_events(store: Store, model: str, version: str, vector: np.ndarray, k: int = 5) -> list[dict]:
    """The k stored events most similar to `vector` (brute-force cosine in DuckDB: exact, and
    fast enough for an analyst's request; distinct texts are ranked, then one event per text)."""
    rows = store.con.execute(
        """
        WITH top AS (
            SELECT text_hash, list_cosine_similarity(vector, ?::FLOAT[]) AS sim
            FROM text_vectors WHERE model = ? AND model_version = ?
            ORDER BY sim DESC LIMIT ?
        )
        SELECT arg_min(e.event_key, e.ts), arg_min(e.computer, e.ts), min(e.ts),
               any_value(e.normalized), max(top.sim)
        FROM top JOIN events e USING (text_hash)
        GROUP BY top.text_hash ORDER BY max(top.sim) DESC
        """, [vector.astype(np.float32).tolist(), model, version, k]).fetchall()
    return [{"event_key": r[0], "computer": r[1], "ts": r[2].isoformat() if r[2] else None,
             "similarity": round(float(r[4]), 6), "normalized": r[3]} for r in rows]


class Enricher:
    def __init__(self, store: Store, text: CanonicalText, embedder, loaded, explain) -> None:
        self.store = store
        self.text = text
        self.embedder = embedder
        self.loaded = loaded
        self.explain = explain

    def enrich(self, doc: Any) -> dict:
        """The alert with a `sysmon_blt` block; an error block when it is not a Sysmon event."""
        if not isinstance(doc, dict):
            raise BadRecord("an alert must be a JSON object")
        try:
            ev = map_document(doc)
        except BadRecord as exc:
            return {**doc, "sysmon_blt": {"error": str(exc)}}
        if ev is None:
            return {**doc, "sysmon_blt": {"error": "not a Sysmon event"}}
        canonical = self.text.build(ev)
        vec = self.embedder.embed([canonical])[0]
        block: dict[str, Any] = {"model": self.embedder.name, "model_version": self.embedder.version,
                                 "normalized": canonical}
        if self.loaded is not None:
            sc = self.loaded.scorer
            res = sc.score(vec[None, :], [canonical]) if getattr(sc, "needs_text", False) \
                else sc.score(vec[None, :])
            ts = TextScore(int(res.cluster[0]), float(res.distance[0]), float(res.score[0]),
                           bool(res.is_outlier[0]), res.detail[0])
            chain = lineage(self.store, ev.fields)
            score, is_outlier, parts = ts.score, ts.is_outlier, None
            if self.loaded.context is not None:
                score, parts = self._context(ev, canonical, ts.score, chain)
                is_outlier = score >= 1.0
            block.update(cluster=ts.cluster, score=score, is_outlier=is_outlier,
                         fit_version=self.loaded.version)
            explanation = self.explain(canonical, ts)
            if parts is not None:
                explanation.update(score=round(score, 4), is_outlier=is_outlier, context=parts)
        else:
            block.update(cluster=None, score=None, is_outlier=None)
            explanation = {"note": "no fit and no shipped clusters: not scored"}
            chain = lineage(self.store, ev.fields)
        explanation["process_lineage"] = chain
        block["explanation"] = explanation
        block["neighbors"] = nearest_events(self.store, self.embedder.name, self.embedder.version, vec)
        return {**doc, "sysmon_blt": orjson.loads(orjson.dumps(block, option=orjson.OPT_SERIALIZE_NUMPY))}

    def _context(self, ev, canonical: str, content: float, chain: list[dict]) -> tuple[float, dict]:
        """The import's context score for one alert: prevalence of its paths, and the lineage
        term from the stored creations of its process and ancestors (their scores as stored)."""
        from plugin.detect.context import ContextScore

        model = self.loaded.context
        novel = model.novel(canonical)
        own = content + (model.novelty_weight if novel else 0.0)
        low = {str(k).lower(): v for k, v in ev.fields.items()}
        keys = [p["event_key"] for p in chain if p.get("event_key")]
        if ev.event_id != 1:  # the acting process's own creation carries too
            actor = _process(self.store, guid(low.get("processguid") or low.get("sourceprocessguid")))
            if actor is not None:
                keys.append(actor["event_key"])
        carry = 0.0
        if keys:
            rows = self.store.con.execute(
                "SELECT detail FROM assignments WHERE model = ? AND event_key IN (SELECT unnest(?))",
                [self.embedder.name, keys]).fetchall()
            for (detail,) in rows:
                d = orjson.loads(detail) if detail else {}
                if "content_score" in d:  # carry = the highest own score along the chain
                    carry = max(carry, d["content_score"]
                                + (model.novelty_weight if d.get("novel_images") else 0.0))
        raw = own + model.lineage_weight * carry
        cs = ContextScore(raw / model.threshold, raw, content, novel, carry)
        return cs.score, cs.detail(model)
