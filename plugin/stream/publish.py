"""Alerts out: each new alert goes to the alerts topic as the original event with its
`sysmon_blt` block, `alert_id` and `kind`, keyed by computer.

A stage after scoring. It publishes before the batch is written and the consumer flushes the
producer before it commits offsets, so a crash in between publishes the alert again on replay
(at least once) and never loses it. An alert is published once: when the store does not hold it
yet and this process has not sent it (twins of an alert fold into its count, silently).
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog

from plugin.pipeline.batch import Batch
from plugin.store import Store

log = structlog.get_logger(__name__)

MAX_REMEMBERED = 100_000


def alert_message(raw: str, alert_id: str, block: dict[str, Any]) -> dict[str, Any]:
    """The original event (its JSON object, or {"raw": ...} for event XML) with the block."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    base = doc if isinstance(doc, dict) else {"raw": raw}
    return {**base, "alert_id": alert_id, "kind": "alert", "sysmon_blt": block}


class AlertPublisher:
    def __init__(self, producer, topic: str, store: Store, model: str, model_version: str) -> None:
        self.producer = producer
        self.topic = topic
        self.store = store
        self.model = model
        self.model_version = model_version
        self.name = f"publish:{topic}"
        self.published = 0
        self._sent: set[str] = set()

    def __call__(self, batch: Batch) -> None:
        mine = [a for a in batch.alerts if a["model"] == self.model and a["alert_id"] not in self._sent]
        if not mine:
            return
        known = self.store.existing_alert_ids(sorted({a["alert_id"] for a in mine}))
        events = {e.event_key: e for e in batch.events}
        scored = {s["event_key"]: s for s in batch.assignments if s["model"] == self.model}
        if len(self._sent) > MAX_REMEMBERED:
            self._sent.clear()
        for a in mine:
            if a["alert_id"] in known or a["alert_id"] in self._sent:
                continue
            self._sent.add(a["alert_id"])
            e, s = events[a["event_key"]], scored.get(a["event_key"], {})
            block = {"model": self.model, "model_version": self.model_version,
                     "cluster": s.get("cluster"), "score": a["score"], "is_outlier": True,
                     "explanation": orjson.loads(s["explanation"]) if s.get("explanation") else None}
            self.producer.produce(self.topic, key=(e.computer or "").encode(),
                                  value=orjson.dumps(alert_message(e.raw, a["alert_id"], block),
                                                     option=orjson.OPT_SERIALIZE_NUMPY))
            self.published += 1
        self.producer.poll(0)

    def stats(self) -> dict:
        return {"name": self.name, "published": self.published}
