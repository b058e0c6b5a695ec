"""The incident stage: the primary model's scored events grouped into incidents, batch by batch.

After the primary's score (and suppress) stage, in `import`, `consume` and `rescore` alike. Its
grouper (`plugin.detect.incidents`) keeps the process trees in memory, bounded; the stages run on
one thread, batch after batch in log order, so it sees each host's events in order.

What it adds to a batch: ``incident_id`` on the primary's assignment rows that joined an
incident, and one row per incident that grew (`Batch.incidents`) for the sink. Events of a tree
that came before its first outlier (the root's creation, its module loads) were written with an
earlier batch; the grouper keeps only their keys (buffered, bounded), and the incident row names
them under ``linked_before`` so the sink sets their stored ``incident_id`` in the same
transaction. Keeping keys rather than whole assignment rows costs a few dozen bytes per event, and
an update by key leaves the stored score and explanation alone.
"""

from __future__ import annotations

from datetime import timedelta

import structlog

from plugin.detect.context import ContextModel, process_view
from plugin.detect.incidents import INCIDENT_WINDOW, IncidentGrouper, Observed, observe
from plugin.pipeline.batch import Batch

log = structlog.get_logger(__name__)


class IncidentStage:
    def __init__(self, model: str, context: ContextModel | None = None,
                 window: timedelta = INCIDENT_WINDOW) -> None:
        self.model = model
        self.name = f"incidents:{model}"
        self.grouper = IncidentGrouper(model, context, window)
        self.incidents: set[str] = set()  # ids seen in this run (for the stats)
        self.linked = 0

    def use_fit(self, context: ContextModel | None) -> None:
        """Root incidents on the new fit's baseline from now on (the consumer's automatic fit at
        the end of its learning period, or one the fit watcher picked up, as
        `ScoreStage.use_fit`): without it the grouper keeps the cold start's context (none),
        and a never-seen image no longer flags its process. The process trees and open
        incidents stay: the events already grouped are the same events, and a tree cut at the
        switch would split a live story in two."""
        self.grouper.context = context
        log.info("incident_context_switched", model=self.model,
                 images=len(context.images) if context is not None else 0)

    def __call__(self, batch: Batch) -> None:
        scored = {a["event_key"]: a for a in batch.assignments if a["model"] == self.model}
        if not scored:
            return
        alerts = {a["event_key"]: a for a in batch.alerts if a["model"] == self.model}
        observed: list[Observed] = []
        for e in batch.events:
            a = scored.get(e.event_key)
            if a is None:
                continue
            alert = alerts.get(e.event_key)
            observed.append(observe(
                e.event_key, e.computer, e.ts, e.event_id,
                process_view(batch.views, e.event_key, e.fields), e.normalized,
                a["score"], a["is_outlier"],
                suppressed=alert is not None and alert.get("status") == "suppressed",
                alert_id=alert["alert_id"] if alert is not None else None))
        grouped = self.grouper.add(observed)
        if not grouped.incidents:
            return
        before: dict[str, list[str]] = {}
        for key, iid in grouped.links.items():
            row = scored.get(key)
            if row is not None:
                row["incident_id"] = iid
            else:  # written with an earlier batch
                before.setdefault(iid, []).append(key)
        for iid, inc in grouped.incidents.items():
            batch.incidents.append({**inc.row(), "linked_before": before.get(iid, []),
                                    "alert_ids": sorted(grouped.alerts.get(iid, ()))})
        for iid in grouped.incidents.keys() - self.incidents:
            inc = grouped.incidents[iid]
            log.debug("incident_opened", incident_id=iid, computer=inc.computer,
                      root_image=inc.root_image, events=inc.events)
        self.incidents.update(grouped.incidents)
        self.linked += len(grouped.links)

    def stats(self) -> dict:
        return {"name": self.name, "incidents": len(self.incidents), "events_linked": self.linked}
