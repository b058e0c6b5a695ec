"""BLT embedding throughput on one GPU: events/s and peak GPU memory.

    python benchmarks/gpu.py [--texts FILE] [--n 100000] [--sizes tiny,small,base]
                             [--batch-tokens 262144] [--model-dir DIR]

bf16 autocast; packed batches with xformers block-diagonal attention when xformers is
importable, padded batches with torch SDPA otherwise (printed). Untrained weights unless
``--model-dir``. Exits with a message (status 2) when CUDA is not available.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.blt_speed import calibrate_untrained, load_texts  # noqa: E402
from plugin.models.attention import HAS_XFORMERS, prefer_packed  # noqa: E402
from plugin.models.blt.model import BLT, BLTConfig  # noqa: E402
from plugin.models.embedder import BLTEmbedder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", help="file with one canonical text per line")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--sizes", default="tiny,small,base")
    ap.add_argument("--batch-tokens", type=int, default=262_144)
    ap.add_argument("--model-dir")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: CUDA is not available on this machine; nothing to measure.",
              file=sys.stderr)
        return 2

    texts = load_texts(args.texts, args.n)
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(0)}; {len(texts)} distinct texts; "
          f"xformers: {HAS_XFORMERS}; layout: {'packed' if prefer_packed(dev) else 'padded'}; bf16")
    print(f"{'model':<12} {'events/s':>10} {'peak GiB':>9} {'seconds':>8}")
    runs = []
    if args.model_dir:
        runs.append((Path(args.model_dir).name, lambda: BLTEmbedder.from_dir(
            args.model_dir, device="cuda", max_batch_tokens=args.batch_tokens)))
    else:
        for size in args.sizes.split(","):
            def make(size=size):
                torch.manual_seed(0)
                model = BLT(BLTConfig.preset(size)).eval()
                calibrate_untrained(model, texts)
                return BLTEmbedder(model, {"blt": "untrained"}, device="cuda",
                                   max_batch_tokens=args.batch_tokens)
            runs.append((size, make))
    for name, make in runs:
        emb = make()
        emb.embed(texts[: min(len(texts), 5000)])  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        emb.embed(texts)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{name:<12} {len(texts) / dt:>10.0f} {peak:>9.2f} {dt:>8.2f}")
        del emb
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
