"""Alert enrichment: an alert in any supported shape -> the same JSON plus a `sysmon_blt` block.

The block: model, model_version, cluster, score, is_outlier, explanation (nearest cluster and
medoid, score against threshold, surprising spans, process lineage) and the 5 nearest stored
events by cosine similarity (event_key, computer, ts, similarity, normalized). The alert is
normalized and embedded as an imported event is, and scored through the same entry
(`plugin.detect.scoring`); its lineage carry comes from the stored scores of its process's and
ancestors' creations instead of an in-memory walk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from plugin.detect.lineage import guid
from plugin.detect.lineage import lineage as walk_lineage
from plugin.detect.scoring import event_score, explanation, score_texts
from plugin.normalize.shapes import BadRecord, map_document, parse_and_map
from plugin.normalize.schema import SchemaSet
from plugin.normalize.text import CanonicalText
from plugin.store import AlertNotFound, Store


def _process(store: Store, g: str | None) -> dict | None:
    """A stored process creation in the shape `plugin.detect.lineage.lineage` walks."""
    if not g:
        return None
    p = store.process_creation(g)
    if p is None:
        return None
    return {"process_guid": g, "event_key": p["event_key"],
            "ts": p["ts"].isoformat() if p["ts"] else None, "image": p["image"],
            "command_line": p["command_line"], "parent_guid": guid(p["parent"])}


def alert_document(raw: str, alert_id: str,
                   incident_ids: list[str] | None = None) -> dict[str, Any]:
    """A stored alert as it goes out (alerts topic, `enrich {"alert_id": ...}`): its original
    event (the JSON object, or {"raw": ...} for event XML) with `alert_id`, `kind`, and the
    `incident_ids` its events belong to (`sysmon-blt incidents`; empty when none)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    return {**(doc if isinstance(doc, dict) else {"raw": raw}), "alert_id": alert_id,
            "kind": "alert", "incident_ids": list(incident_ids or [])}


def lineage(store: Store, fields: dict) -> list[dict]:
    """Ancestors by ParentProcessGuid, as far as the stored process-creation events reach."""
    return walk_lineage(fields, lambda g: _process(store, g))


class Enricher:
    @classmethod
    def for_store(cls, store: Store, embedder, model_dir: Path, schemas: SchemaSet) -> "Enricher":
        """The enricher of a store: its latest fit (or the model directory's shipped clusters,
        not recorded: the store may be read-only) and explanations over its texts."""
        from plugin.detect.explain import make_explainer
        from plugin.detect.fitting import load_scorer

        loaded = load_scorer(store, embedder.name, embedder.version, model_dir, record=False,
                             embedder=embedder)
        explain = make_explainer(loaded, embedder, store.texts_by_hash) if loaded else None
        return cls(store, CanonicalText(schemas), embedder, loaded, explain)

    def __init__(self, store: Store, text: CanonicalText, embedder, loaded, explain) -> None:
        self.store = store
        self.text = text
        self.embedder = embedder
        self.loaded = loaded
        self.explain = explain

    def enrich(self, doc: Any) -> dict:
        """The alert with a `sysmon_blt` block; an error block (``sysmon_blt.error``) when it
        is not a Sysmon event, or names an alert the store does not hold.

        ``{"alert_id": ...}`` enriches a stored alert: its first event as stored, with
        ``alert_id`` and ``kind`` added (the shape of an alert on the alerts topic)."""
        if not isinstance(doc, dict):
            raise BadRecord("an alert must be a JSON object")
        own_key = None
        try:
            if "alert_id" in doc and len(doc) <= 2:  # a reference, not an event
                doc, ev, own_key = self._stored_alert(str(doc["alert_id"]))
            else:
                ev = map_document(doc)
        except (BadRecord, AlertNotFound) as exc:
            return {**doc, "sysmon_blt": {"error": str(exc)}}
        if ev is None:
            return {**doc, "sysmon_blt": {"error": "not a Sysmon event"}}
        canonical = self.text.build(ev)
        vec = self.embedder.embed([canonical])[0]
        block: dict[str, Any] = {"model": self.embedder.name, "model_version": self.embedder.version,
                                 "normalized": canonical}
        chain = lineage(self.store, ev.fields)
        if self.loaded is not None:
            ts = score_texts(self.loaded.scorer, vec[None, :], [canonical])[0]
            context = self.loaded.context
            cs = (context.combine(ts.score, context.novel(canonical), self._carry(ev, chain))
                  if context is not None else None)
            scored = event_score(ts, context, cs)
            block.update(cluster=ts.cluster, score=scored.score, is_outlier=scored.is_outlier,
                         fit_version=self.loaded.version)
            block["explanation"] = explanation(self.explain, canonical, ts, scored, chain)
        else:
            block.update(cluster=None, score=None, is_outlier=None)
            block["explanation"] = {"note": "no fit and no shipped clusters: not scored",
                                    "process_lineage": chain}
        if own_key is None:
            own_key = ev.key(orjson.dumps(doc))
        block["neighbors"] = self.store.nearest_events(self.embedder.name, self.embedder.version,
                                                       vec, exclude_event=own_key)
        return {**doc, "sysmon_blt": orjson.loads(orjson.dumps(block, option=orjson.OPT_SERIALIZE_NUMPY))}

    def _stored_alert(self, alert_id: str) -> tuple[dict, Any, str]:
        """(the alert's document, its event, its event_key) from the store."""
        a = self.store.alert(alert_id)
        raw = a.get("raw") or ""
        doc = alert_document(raw, a["alert_id"], a.get("incident_ids"))
        ev = parse_and_map(raw) if raw else None
        if ev is None:
            raise BadRecord(f"alert {a['alert_id']}: its stored event cannot be read back")
        return doc, ev, a["event_key"]

    def _carry(self, ev, chain: list[dict]) -> float:
        """The lineage term as the import's walk would have carried it: the highest own score
        (content + prevalence) among the stored creations of the alert's process and ancestors."""
        context = self.loaded.context
        keys = [p["event_key"] for p in chain if p.get("event_key")]
        if ev.event_id != 1:  # the acting process's own creation carries too
            low = {str(k).lower(): v for k, v in ev.fields.items()}
            actor = _process(self.store, guid(low.get("processguid") or low.get("sourceprocessguid")))
            if actor is not None:
                keys.append(actor["event_key"])
        carry = 0.0
        for d in self.store.assignment_details(self.embedder.name, keys):
            if "content_score" in d:
                carry = max(carry, context.own(d["content_score"], d.get("novel_images") or []))
        return carry
