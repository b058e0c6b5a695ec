"""Embedding workers against in-process embedding: simulated records through the flow with both
models (as `import` and `consume` run them), for a given worker count, threads and batch size.

A warm-up of 2,000 records fills the caches first; the timed part is the next --events records
(about 19% of their texts new, so the models do real work).

usage: python benchmarks/workers.py [--events 5000] [--batch 100] [--workers 0|1|2] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson

from plugin import simulate
from plugin.config import load_config
from plugin.normalize.normalizer import Normalizer
from plugin.normalize.schema import load_schemas
from plugin.pipeline.assemble import load_embedder, load_shadow, model_stages
from plugin.pipeline.flow import Flow
from plugin.pipeline.workers import WorkerPlan, WorkerPool
from plugin.resources import default_model_dir
from plugin.sources.base import RawRecord
from plugin.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1, help="0: in-process")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    args = ap.parse_args()
    db = Path(tempfile.mkdtemp(prefix="workers-bench-")) / "w.duckdb"
    cfg = load_config(None, {"db": str(db), "model": None})
    emb, shadow = load_embedder(None), load_shadow(cfg)
    pool = (WorkerPool(default_model_dir(), WorkerPlan(("cpu",) * args.workers, args.threads),
                       shadow=shadow is not None) if args.workers else None)
    store = open_store(str(db), long_running=True)
    try:
        stages = model_stages(store, emb, None, shadow, cfg.shadow_sample_rate, [], pool=pool)
        records = [orjson.dumps(r).decode() for r in
                   simulate.simulate_records(args.events + 2000, seed=3, novel_rate=0.1)]
        flow = Flow(store, Normalizer(load_schemas(None)), stages, batch_size=args.batch)
        for i, r in enumerate(records[:2000]):
            flow.feed(RawRecord("warm-up", i, r))
        flow.flush()
        flow.drain()
        t0 = time.perf_counter()
        for i, r in enumerate(records[2000:]):
            flow.feed(RawRecord("timed", i, r))
        flow.flush()
        flow.drain()
        dt = time.perf_counter() - t0
        flow.close()
    finally:
        store.close()
        if pool is not None:
            pool.close()
    where = f"{args.workers} worker(s) x {args.threads} thread(s)" if args.workers else "in-process"
    print(f"{where}, {args.batch}-event batches: {args.events} events in {dt:.2f} s = "
          f"{args.events / dt:.0f} events/s")


if __name__ == "__main__":
    main()
