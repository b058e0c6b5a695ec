"""Import speed and memory as a user runs it: `sysmon-blt import` in a subprocess, its events/s
(from `--json`), and the peak resident memory summed over the importer and its embedding workers
(VmRSS of the process tree, sampled every 0.5 s; `/usr/bin/time` reports the largest process
only).

Three measurements, all on the same machine in one run:
  folder:    a default import of PATHS (default: ../shared/data/otrf/compound)
  captures:  LSASS_campaign_01-04 imported together, then all-MiniLM-L6-v2 (the `bench` extra)
             embedding the same import's distinct canonical texts, timed in this process after a
             warm-up batch (issue 16: the whole import at least 3x faster than MiniLM alone)
  after fit: the held-out capture imported alone before any fit, then into a copy of a store that
             holds the other captures and a fit (issue 16: after a fit no slower than before);
             default LSASS_campaign_01-03 as the baseline, 04 held out

usage: python benchmarks/import_speed.py [--data ../shared/data] [--paths P ...] [--skip-folder]
                                          [--skip-captures] [--skip-after-fit] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import rss_mb  # noqa: E402


def cli(*args: str) -> list[str]:
    """The command line as a user runs it: through the entry point, so with the allocator it
    picks (jemalloc where installed; `SYSMON_BLT_ALLOCATOR=system` measures glibc's malloc)."""
    return [sys.executable, "-m", "plugin.cli", *args]


def run_import(db: Path, paths: list[str], extra: tuple[str, ...] = ()) -> dict:
    """One import; its summary plus the peak tree RSS (MiB) and the peaks of the importer and of
    its workers apart."""
    proc = subprocess.Popen(cli("import", *paths, "--db", str(db), "-q", "--json", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peaks = {"tree": 0.0, "importer": 0.0, "workers": 0.0}

    def sample() -> None:
        while proc.poll() is None:
            got = rss_mb(proc.pid)
            if got:
                peaks["tree"] = max(peaks["tree"], sum(got))
                peaks["importer"] = max(peaks["importer"], got[0])
                peaks["workers"] = max(peaks["workers"], sum(got[1:]))
            time.sleep(0.5)

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}): {err.decode()[-2000:]}")
    s = json.loads(out)
    blt = next((st for st in s.get("stages", []) if st["name"] == "embed:blt"), {})
    return {"events": s["new_events"], "events_per_second": s["events_per_second"],
            "seconds": s["seconds"], "wall_seconds": round(wall, 1), "outliers": s["outliers"],
            "texts_embedded": blt.get("texts_embedded"), "blt_texts_per_second": blt.get("texts_per_second"),
            **{f"peak_{k}_mib": round(v) for k, v in peaks.items()}}


def distinct_texts(db: Path) -> list[str]:
    """The canonical texts an import stored, once each: what the BLT had to embed at most."""
    import duckdb
    with duckdb.connect(str(db), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT DISTINCT normalized FROM events").fetchall()]


def minilm_seconds(texts: list[str]) -> float | None:
    """Seconds all-MiniLM-L6-v2 takes to embed TEXTS on this CPU (None without the bench extra)."""
    from embed import minilm_rate
    rate = minilm_rate(texts)
    return None if rate is None else len(texts) / rate


def fit(db: Path) -> None:
    subprocess.run(cli("fit", "--db", str(db), "-q"), check=True, stdout=subprocess.DEVNULL)


def row(name: str, r: dict) -> str:
    return (f"{name:<34} {r['events']:>8} {r['events_per_second']:>9,.0f} {r['seconds']:>7.1f} "
            f"{r['texts_embedded'] or 0:>7} {r['blt_texts_per_second'] or 0:>7.0f} "
            f"{r['peak_tree_mib']:>6} {r['peak_importer_mib']:>6} {r['peak_workers_mib']:>6} "
            f"{r['outliers']:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--paths", nargs="+", help="what the folder import reads (default: otrf/compound)")
    ap.add_argument("--baseline", nargs="+", default=["01", "02", "03"],
                    help="LSASS captures of the fitted store")
    ap.add_argument("--held-out", default="04", help="the LSASS capture imported after the fit")
    ap.add_argument("--skip-folder", action="store_true")
    ap.add_argument("--skip-captures", action="store_true")
    ap.add_argument("--skip-after-fit", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep the databases in this folder")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="import_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        if not args.skip_folder:
            paths = args.paths or [str(args.data / "otrf" / "compound")]
            results["folder"] = run_import(work / "folder.duckdb", paths)
        lsass = args.data / "otrf" / "compound"
        if not args.skip_captures:
            caps = [str(lsass / f"LSASS_campaign_{c}") for c in ("01", "02", "03", "04")]
            results["captures"] = run_import(work / "captures.duckdb", caps)
            texts = distinct_texts(work / "captures.duckdb")
            results["captures"]["distinct_texts"] = len(texts)
            results["captures"]["minilm_seconds"] = minilm_seconds(texts)
        if not args.skip_after_fit:
            cap = {c: str(lsass / f"LSASS_campaign_{c}") for c in [*args.baseline, args.held_out]}
            base = work / "baseline.duckdb"
            results["baseline"] = run_import(base, [cap[c] for c in args.baseline])
            fit(base)
            results["before_fit"] = run_import(work / "before_fit.duckdb", [cap[args.held_out]])
            shutil.copy(base, work / "after_fit.duckdb")
            results["after_fit"] = run_import(work / "after_fit.duckdb", [cap[args.held_out]])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    from plugin.memory import ALLOCATOR_ENV, choose_allocator
    library = choose_allocator(os.environ.get(ALLOCATOR_ENV), "import")
    allocator = f"jemalloc ({library})" if library else "system"
    print(f"allocator of the imports: {allocator} ({ALLOCATOR_ENV}, default auto)")
    print(f"{'import':<34} {'events':>8} {'events/s':>9} {'secs':>7} {'new txt':>7} "
          f"{'BLT t/s':>7} {'tree':>6} {'main':>6} {'worker':>6} {'outliers':>8}   (RSS in MiB)")
    names = {"folder": "folder: " + ", ".join(Path(p).name for p in (args.paths or ["compound"])),
             "captures": "LSASS 01-04 together",
             "baseline": "baseline: LSASS " + "+".join(args.baseline),
             "before_fit": f"LSASS {args.held_out} alone, no fit",
             "after_fit": f"LSASS {args.held_out} after the fit"}
    for k, r in results.items():
        print(row(names[k], r))
    cap = results.get("captures")
    if cap:
        if cap["minilm_seconds"] is None:
            print("\nMiniLM comparison skipped: pip install -e '.[bench]'")
        else:
            print(f"\nall-MiniLM-L6-v2 alone on the {cap['distinct_texts']:,} distinct texts of LSASS "
                  f"01-04: {cap['minilm_seconds']:.1f} s; the whole import: {cap['wall_seconds']:.1f} s "
                  f"wall ({cap['minilm_seconds'] / cap['wall_seconds']:.2f}x faster)")
    if "after_fit" in results:
        ratio = results["after_fit"]["events_per_second"] / results["before_fit"]["events_per_second"]
        print(f"\nimport after a fit / before one: {ratio:.2f}x")
    print(json.dumps({**results, "allocator": allocator}))


if __name__ == "__main__":
    main()
