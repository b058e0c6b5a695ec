"""Ingest throughput: raw parsing vs our parse + normalize, and + DuckDB write.

Prints, in one run:
  EVTX folder:   raw pyevtx-rs records_json + json.loads (records/s)
  OTRF archives: raw read + json.loads (lines/s)
  both:          our parse + normalize (records/s, Sysmon events/s)
                 our parse + normalize + DuckDB write, i.e. `import` (records/s, events/s)

usage: python benchmarks/ingest.py [--data ../shared/data] [--otrf-archives N]
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import evtx

from plugin.logs import configure
from plugin.normalize.normalizer import NOT_SYSMON, Normalizer
from plugin.normalize.schema import load_schemas
from plugin.normalize.shapes import BadRecord
from plugin.pipeline.importer import Importer
from plugin.sources.base import RawRecord
from plugin.sources.files import ArchiveInput, FileInput, discover
from plugin.store import open_store


def raw_evtx(files: list[Path]) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for f in files:
        it = evtx.PyEvtxParser(str(f)).records_json()
        while True:
            try:
                rec = next(it)
            except StopIteration:
                break
            except Exception:
                continue
            json.loads(rec["data"])
            n += 1
    return n, time.perf_counter() - t0


def raw_archives(files: list[Path]) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for f in files:
        if f.suffix == ".zip":
            with zipfile.ZipFile(f) as z:
                streams = [z.open(i) for i in z.infolist() if not i.is_dir() and "__MACOSX" not in i.filename]
                for s in streams:
                    for line in s:
                        if line.strip():
                            try:
                                json.loads(line)
                            except ValueError:
                                pass
                            n += 1
        else:
            with tarfile.open(f, "r|*") as t:
                for m in t:
                    if m.isfile() and "__MACOSX" not in m.name and not Path(m.name).name.startswith("._"):
                        for line in t.extractfile(m):
                            if line.strip():
                                try:
                                    json.loads(line)
                                except ValueError:
                                    pass
                                n += 1
    return n, time.perf_counter() - t0


def ours_normalize(paths: list[Path]) -> tuple[int, int, float]:
    norm = Normalizer(load_schemas())
    n = ev = 0
    t0 = time.perf_counter()
    units = list(discover([str(p) for p in paths]))
    for u in units:
        # archive members stream in order: consume each before asking for the next
        inputs = [u] if isinstance(u, FileInput) else (u.members() if isinstance(u, ArchiveInput) else [])
        for inp in inputs:
            if not hasattr(inp, "records"):
                continue
            for item in inp.records():
                if not isinstance(item, RawRecord):
                    continue
                n += 1
                try:
                    if norm(item) is not NOT_SYSMON:
                        ev += 1
                except BadRecord:
                    pass
    return n, ev, time.perf_counter() - t0


def ours_import(paths: list[Path]) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as d:
        store = open_store(Path(d) / "bench.duckdb")
        s = Importer(store, load_schemas(), progress=False).run([str(p) for p in paths])
        store.close()
    return s.records, s.sysmon_events, s.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--otrf-archives", type=int, default=20, help="largest N OTRF archives (0 = all)")
    args = ap.parse_args()
    configure(-1)
    data = Path(args.data)
    evtx_dirs = [data / "evtx-attack-samples", data / "evtx-rs-samples"]
    evtx_files = sorted(f for d in evtx_dirs for f in d.rglob("*.evtx"))
    archives = sorted((f for f in (data / "otrf").rglob("*") if f.name.endswith((".zip", ".tar.gz"))),
                      key=lambda f: -f.stat().st_size)
    if args.otrf_archives:
        archives = archives[: args.otrf_archives]
    print(f"cpu: {os.cpu_count()} cores; EVTX files: {len(evtx_files)}; OTRF archives: {len(archives)}")
    rows = []
    n, t = raw_evtx(evtx_files)
    rows.append(("EVTX", "raw pyevtx-rs records_json + json.loads", n, None, t))
    n, ev, t = ours_normalize(evtx_dirs)
    rows.append(("EVTX", "our parse + normalize", n, ev, t))
    n, ev, t = ours_import(evtx_dirs)
    rows.append(("EVTX", "our parse + normalize + DuckDB write", n, ev, t))
    n, t = raw_archives(archives)
    rows.append(("OTRF", "raw read + json.loads", n, None, t))
    n, ev, t = ours_normalize(archives)
    rows.append(("OTRF", "our parse + normalize", n, ev, t))
    n, ev, t = ours_import(archives)
    rows.append(("OTRF", "our parse + normalize + DuckDB write", n, ev, t))
    print(f"{'data':5} {'path':40} {'records':>9} {'sysmon':>8} {'seconds':>8} {'records/s':>10} {'events/s':>9}")
    for data_name, what, n, ev, t in rows:
        print(f"{data_name:5} {what:40} {n:9d} {ev if ev is not None else '':>8} {t:8.2f} "
              f"{n / t:10.0f} {(ev / t if ev else 0):9.0f}")
    raw = {r[0]: r[2] / r[4] for r in rows if r[3] is None}
    for r in rows:
        if r[3] is not None and "DuckDB" in r[1]:
            print(f"{r[0]}: full path at {100 * (r[2] / r[4]) / raw[r[0]]:.0f}% of the raw rate (goal >= 50%)")


if __name__ == "__main__":
    main()
