"""The consumer's learning period: a store with no fit learns its fleet before it alerts freely.

A consumer started on a store nobody has fitted scores with the cold start (the shipped model,
calibrated on the stream's own events: `plugin.detect.calibration.CaseCalibration`). Nobody has
vouched for that traffic, so for a while (``learning_hours`` and ``learning_events``, both)
every event is scored and stored, but only scores of at least ``learning_bar`` raise alerts.
Then the consumer fits on what it stored, holding back every text the cold start flagged (an
attack inside the window stays evidence, never "normal"), switches its scorers to the new fit,
and says so in its logs and metrics. A store that already has a fit has no learning period;
a restart resumes the count from the store (its event count and its oldest event's write time).

On a store shared by several consumers (a DuckLake) the period may end without fitting here:
when the fit watcher (`plugin.pipeline.fitwatch`) picks up a fit another instance or an operator
made, the consumer switches to it and the period is over (`adopted`); and the fit at the end
re-checks the store first (`plugin.pipeline.assemble.finish_learning`), so an instance whose
period ends after another's fit only switches. Instances ending at the same moment may each
still fit (the re-check narrows that window, it does not close it); their watchers then all
move to the newest version.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Callable

import structlog

from plugin.store import Store, utcnow

log = structlog.get_logger(__name__)


class LearningPeriod:
    """Counts stored events toward the end of the learning period and runs the automatic fit.
    Its start and end are logged as warnings: they change what reaches analysts."""

    def __init__(self, store: Store, *, hours: float, events: int,
                 finish: Callable[[], dict]) -> None:
        self.hours = hours
        self.events_needed = events
        self.finish = finish
        self.events = store.event_count()
        self.since: datetime = store.first_stored_at() or utcnow()
        self.scheduled = False
        #: the period is over: fitted here, or a fit made elsewhere was adopted
        self.ended = False
        log.warning("learning_period", events_needed=events, hours=hours,
                    events_so_far=self.events, since=self.since.isoformat(),
                    note="cold start: events are scored and stored; only scores of at least "
                         "the learning bar alert until the automatic fit")

    def observe(self, new_events: int) -> None:
        self.events += new_events

    def due(self) -> bool:
        """Both the event count and the time are reached, and the fit is not scheduled yet."""
        if self.scheduled:
            return False
        hours = (utcnow() - self.since).total_seconds() / 3600
        return self.events >= self.events_needed and hours >= self.hours

    def run(self) -> dict:
        """Fit and switch (on the stage thread, between batches); nothing when the period
        already ended (a fit made elsewhere was adopted after this run was scheduled)."""
        if self.ended:
            return {}
        t0 = time.monotonic()
        res = self.finish()
        self.ended = True
        log.warning("learning_period_ended", events=self.events, fit_version=res.get("version"),
                    adopted=bool(res.get("adopted")), baseline_texts=res.get("baseline_texts"),
                    held_back_outlier_texts=res.get("held_back_outlier_texts"),
                    seconds=round(time.monotonic() - t0, 2),
                    note="scoring with the new fit; texts the cold start flagged were held back")
        return res

    def adopted(self, version: int) -> bool:
        """A fit made elsewhere was picked up (the stages already switched to it): the period
        is over without a fit here. True when this ended it (False: it had ended already)."""
        if self.ended:
            return False
        self.ended = self.scheduled = True
        log.warning("learning_period_ended", events=self.events, fit_version=version,
                    adopted=True, note="a fit made elsewhere (another instance, `sysmon-blt "
                                       "fit`) was picked up: scoring with it, not fitting here")
        return True
