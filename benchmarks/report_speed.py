"""Time of `sysmon-blt report` on a synthetic database of N events x 2 models.

    python benchmarks/report_speed.py [--events 100000] [--texts 15000] [--dim 128]
                                      [--db /tmp/report-bench.duckdb] [--out /tmp/report-bench]

Builds the database once (reused when it exists): events over a few thousand distinct texts in
clustered directions, BLT and Linformer vectors, assignments for both, labels and model_runs;
then runs build_report with its defaults and prints the per-step timings. The target is
under ~60 s for 100k events x 2 models on two CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugin.report.compare import build_report
from plugin.store import VectorRows, open_store, utcnow


def build(db: Path, n_events: int, n_texts: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    store = open_store(db)
    hashes = [f"{i:064x}" for i in range(n_texts)]
    topic = rng.integers(0, 40, n_texts)
    vecs = {}
    for m, noise in (("blt", 0.6), ("linformer", 1.2)):
        centres = rng.normal(0, 1, (40, dim))
        v = centres[topic] + rng.normal(0, noise, (n_texts, dim))
        vecs[m] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        store.register_model(m, f"{m}-v1", dim, None)
    zipf = rng.zipf(1.3, n_events) % n_texts
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    now = utcnow()
    batch = 20000
    for start in range(0, n_events, batch):
        idx = np.arange(start, min(n_events, start + batch))
        n = len(idx)
        ev = {
            "event_key": [f"{i:032x}" for i in idx], "source": ["bench"] * n,
            "position": idx.tolist(), "event_id": [1] * n, "computer": ["WS"] * n,
            "user_name": ["u"] * n, "ts": [t0 + timedelta(seconds=int(i)) for i in idx],
            "record_id": idx.tolist(), "channel": ["c"] * n, "shape": ["flat"] * n,
            "normalized": [f"text {zipf[i]}" for i in idx], "text_hash": [hashes[zipf[i]] for i in idx],
            "fields": ["{}"] * n, "raw": ["{}"] * n, "imported_at": [now] * n,
        }
        rows = []
        for m in ("blt", "linformer"):
            sc = rng.gamma(1.5, 0.3, n)
            rows += [{"event_key": k, "model": m, "version": 1, "cluster": int(topic[zipf[i]] % 12),
                      "distance": float(s), "score": float(s), "is_outlier": bool(s >= 1.0),
                      "detail": None, "explanation": None}
                     for k, i, s in zip(ev["event_key"], idx, sc)]
        vr = [VectorRows(m, f"{m}-v1", hashes, vecs[m]) for m in vecs] if start == 0 else []
        store.write_batch(ev, [], vectors=vr, assignments=rows)
    store.con.execute("INSERT INTO labels SELECT event_key, random() < 0.01, 'bench' FROM events")
    for m, tps in (("blt", 800.0), ("linformer", 2400.0)):
        store.con.execute("INSERT INTO model_runs VALUES (?, 'import', ?, ?, ?, ?, ?, ?, ?, ?)",
                          [now, m, f"{m}-v1", n_events, n_texts, n_texts / tps, tps, 60.0,
                           n_events / 60.0])
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--texts", type=int, default=15_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--db", default="/tmp/report-bench.duckdb")
    ap.add_argument("--out", default="/tmp/report-bench")
    args = ap.parse_args()
    db = Path(args.db)
    if not db.exists():
        t = time.perf_counter()
        build(db, args.events, args.texts, args.dim)
        print(f"built {db} in {time.perf_counter() - t:.1f} s")
    store = open_store(db, read_only=True)
    try:
        t = time.perf_counter()
        s = build_report(store, Path(args.out))
        print(f"report: {time.perf_counter() - t:.1f} s; steps: {s['timings']}")
    finally:
        store.close()


if __name__ == "__main__":
    main()
