"""Re-embed and re-score stored events after a model or fit change, through the same stages
`import` uses (so the two can never disagree on a score)."""

from __future__ import annotations

import time

import structlog

from plugin.normalize.normalizer import NormalizedEvent
from plugin.pipeline.importer import Batch
from plugin.store.duckdb import Store

log = structlog.get_logger(__name__)


def rescore(store: Store, stages: list, batch_size: int = 5000) -> dict:
    t0 = time.perf_counter()
    # in log order, with fields (the context scorer walks process GUIDs); streamed from a second
    # cursor so the writes below do not cut the read short
    cur = store.con.cursor()
    cur.execute(
        "SELECT event_key, source, position, event_id, computer, user_name, ts, record_id, channel, "
        "shape, normalized, text_hash, fields FROM events ORDER BY ts, event_key")
    n = 0
    while rows := cur.fetchmany(batch_size):
        events = [NormalizedEvent(*r[:-1], fields=r[-1] or "", raw="") for r in rows]
        b = Batch(events, [])
        for stage in stages:
            stage(b)
        store.write_batch({}, [], b.vectors, b.assignments, b.alerts)
        n += len(events)
    cur.close()
    stats = [s.stats() for s in stages if hasattr(s, "stats")]
    return {"events": n, "seconds": round(time.perf_counter() - t0, 2), "stages": stats}
