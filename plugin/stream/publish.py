"""Alerts out: each new alert goes to the alerts topic as the original event with its
`sysmon_blt` block, `alert_id`, `kind` and the `incident_ids` its event belongs to, keyed by
computer; each incident that was created or grew goes there too, once per batch, as its row with
`kind: "incident"`.

A stage after scoring. It publishes before the batch is written and the consumer flushes the
producer before it commits offsets, so a crash in between publishes the alert again on replay
(at least once) and never loses it. Twins of an alert fold into its count silently unless the
alert was quiet for a while (see `AlertPublisher`).

Analysts' verdicts are shared: the publisher keeps no status in memory, it reads the batch's
alerts' statuses from the store on every batch (one query by id, only for batches with alerts),
so an alert marked false_positive or suppressed through any instance sharing the store (a
DuckLake), its triage page or `alerts mark`, stops alerting here from the next batch on.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import structlog

from plugin.detect.enrich import alert_document
from plugin.pipeline.batch import Batch
from plugin.store import Store

log = structlog.get_logger(__name__)

MAX_REMEMBERED = 100_000


class AlertPublisher:
    """Publishes alerts with hygiene: an alert's twins alert again only after ``quiet_minutes``
    without one (event time); an alert an analyst marked (false_positive, suppressed) or a rule
    suppressed never alerts; at most ``rate_per_host`` messages per host and minute, and one
    `rate_summary` message when a host trips that limit."""

    def __init__(self, producer, topic: str, store: Store, model: str, model_version: str, *,
                 quiet_minutes: int = 60, rate_per_host: int = 20) -> None:
        self.producer = producer
        self.topic = topic
        self.store = store
        self.model = model
        self.model_version = model_version
        self.quiet = timedelta(minutes=quiet_minutes)
        self.rate_per_host = rate_per_host
        self.name = f"publish:{topic}"
        self.published = 0
        self.held_back = 0
        self.rate_summaries = 0
        self.incidents_published = 0
        # alert -> latest twin seen here (not yet stored): the quiet window only, never a status
        self._seen: dict[str, datetime] = {}
        self._per_host: dict[tuple[str, int], int] = {}  # (computer, minute) -> messages

    def __call__(self, batch: Batch) -> None:
        self._publish_incidents(batch)
        mine = [a for a in batch.alerts if a["model"] == self.model]
        if not mine:
            self.producer.poll(0)
            return
        states = self.store.alert_states(sorted({a["alert_id"] for a in mine}))
        events = {e.event_key: e for e in batch.events}
        scored = {s["event_key"]: s for s in batch.assignments if s["model"] == self.model}
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.clear()
        now = datetime.now(timezone.utc)
        for a in mine:
            aid, ts = a["alert_id"], a["ts"] or now
            status, stored_last = states.get(aid, ("open", None))
            last = max(filter(None, (stored_last, self._seen.get(aid))), default=None)
            self._seen[aid] = max(ts, self._seen.get(aid, ts))
            if a.get("status") == "suppressed" or status != "open":
                continue
            if last is not None and ts - last < self.quiet:
                continue  # a twin within the quiet window: folded into the alert's count
            e = events[a["event_key"]]
            if not self._within_rate(e.computer or "", now):
                continue
            s = scored.get(a["event_key"], {})
            block = {"model": self.model, "model_version": self.model_version,
                     "cluster": s.get("cluster"), "score": a["score"], "is_outlier": True,
                     "explanation": orjson.loads(s["explanation"]) if s.get("explanation") else None}
            incidents = [s["incident_id"]] if s.get("incident_id") else []
            self._send(e.computer, {**alert_document(e.raw, aid, incidents), "sysmon_blt": block})
            self.published += 1
        self.producer.poll(0)

    def _publish_incidents(self, batch: Batch) -> None:
        """One message per incident of this model that was created or grew in the batch (the
        incident stage hands one row per incident and batch): the row with its running totals,
        keyed by computer. Not held to the per-host alert rate: an incident is the summary that
        replaces a flood of alerts, and a batch sends at most one update of each."""
        for row in batch.incidents:
            if row["model"] != self.model:
                continue
            msg = {k: v for k, v in row.items() if k not in ("linked_before", "alert_ids")}
            self._send(row["computer"], {**msg, "kind": "incident"})
            self.incidents_published += 1

    def _within_rate(self, computer: str, now: datetime) -> bool:
        minute = int(now.timestamp() // 60)
        key = (computer, minute)
        n = self._per_host[key] = self._per_host.get(key, 0) + 1
        if len(self._per_host) > 10_000:  # keep only this minute's counters
            self._per_host = {k: v for k, v in self._per_host.items() if k[1] == minute}
        if n <= self.rate_per_host:
            return True
        self.held_back += 1
        if n == self.rate_per_host + 1:  # it trips: say so once for this host and minute
            self._send(computer, {"kind": "rate_summary", "computer": computer,
                                  "window_start": datetime.fromtimestamp(minute * 60, timezone.utc).isoformat(),
                                  "limit_per_minute": self.rate_per_host,
                                  "note": "more alerts on this host this minute are stored, not sent"})
            self.rate_summaries += 1
        return False

    def _send(self, computer: str | None, message: dict[str, Any]) -> None:
        self.producer.produce(self.topic, key=(computer or "").encode(),
                              value=orjson.dumps(message, default=str,
                                                 option=orjson.OPT_SERIALIZE_NUMPY))

    def stats(self) -> dict:
        return {"name": self.name, "published": self.published, "held_back": self.held_back,
                "rate_summaries": self.rate_summaries,
                "incidents_published": self.incidents_published}


class DeadLetterPublisher:
    """Sends each dead letter of a batch to a dead-letter topic as well as to the table: the
    payload (cut at 64 KiB, as stored) as the value, the reason, source and offset as headers,
    so a team can replay or inspect what could not be read with its own Kafka tools. Published
    before the batch's offsets are committed, like the alerts (at least once)."""

    def __init__(self, producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.name = f"dead-letters:{topic}"
        self.published = 0

    def __call__(self, batch: Batch) -> None:
        for d in batch.dead:
            self.producer.produce(
                self.topic, value=(d.payload or "").encode("utf-8", "replace"),
                headers=[("sysmon_blt_reason", d.reason.encode("utf-8", "replace")),
                         ("sysmon_blt_source", d.source.encode("utf-8", "replace")),
                         ("sysmon_blt_position", str(d.position).encode())])
            self.published += 1

    def stats(self) -> dict:
        return {"name": self.name, "published": self.published}
