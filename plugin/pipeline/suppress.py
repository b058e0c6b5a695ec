"""The suppress stage: alerts matching a configured rule are kept as `suppressed`, not `open`.

After the primary model's score stage, in `import` and `consume` alike, so the same rules hold
for a forensic import and a live stream; the events and their scores are stored unchanged.

The rules are configuration, read once at start: consumers sharing one store (a DuckLake) each
apply their own, so give every instance of a group the same `suppress` list. An analyst's verdict
on one alert (suppressed, false_positive) is not a rule: it lives in the store's `alerts.status`,
which the alert publisher reads on every batch, so it holds on every instance at once.
"""

from __future__ import annotations

from plugin.detect.suppress import SuppressRules
from plugin.pipeline.batch import Batch


class SuppressStage:
    def __init__(self, rules: SuppressRules, model: str) -> None:
        self.rules = rules
        self.model = model
        self.name = "suppress"
        self.suppressed = 0

    def __call__(self, batch: Batch) -> None:
        if not batch.alerts:
            return
        events = {e.event_key: e for e in batch.events}
        cluster = {a["event_key"]: a["cluster"] for a in batch.assignments if a["model"] == self.model}
        for a in batch.alerts:
            e = events.get(a["event_key"])
            if e is not None and self.rules.matches(e.normalized, e.computer, e.event_id,
                                                    cluster.get(e.event_key)):
                a["status"] = "suppressed"
                self.suppressed += 1

    def stats(self) -> dict:
        return {"name": self.name, "suppressed": self.suppressed, "rules": len(self.rules.rules)}
