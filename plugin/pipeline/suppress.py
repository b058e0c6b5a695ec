"""The suppress stage: alerts matching a configured rule are kept as `suppressed`, not `open`.

After the primary model's score stage, in `import` and `consume` alike, so the same rules hold
for a forensic import and a live stream; the events and their scores are stored unchanged.
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
