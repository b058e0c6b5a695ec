"""Re-embed and re-score stored events after a model or fit change, through the same flow and
stages `import` uses (so the two can never disagree on a score)."""

from __future__ import annotations

import time
from typing import Sequence

import structlog

from plugin.pipeline.batch import BatchStage
from plugin.pipeline.flow import Flow
from plugin.pipeline.incidents import IncidentStage
from plugin.store import Store

log = structlog.get_logger(__name__)


def rescore(store: Store, stages: Sequence[BatchStage], batch_size: int = 5000) -> dict:
    """Stored events in log order (the context scorer and the incident grouper walk process
    trees) through the stages; the sink writes what the stages add (vectors, assignments, alerts,
    incidents), not the events."""
    t0 = time.perf_counter()
    # every stored outlier folds into its alert again: start the counts from zero
    store.reset_alert_counts([s.model for s in stages if getattr(s, "alerts", False)])
    # and the incidents form again from the new scores: unlink and empty them first
    store.reset_incidents([s.model for s in stages if isinstance(s, IncidentStage)])
    flow = Flow(store, None, stages, batch_size=batch_size, store_events=False)
    n = 0
    with store.rewriting():
        try:
            for events in store.events_in_log_order(batch_size):
                for e in events:
                    flow.add(e)
                n += len(events)
            flow.flush()
            flow.drain()
        finally:
            flow.close()
    stats = [s.stats() for s in stages if hasattr(s, "stats")]
    return {"events": n, "seconds": round(time.perf_counter() - t0, 2), "stages": stats}
