"""Shadow model (Linformer) speed on CPU: embed texts/s and masked-LM train step time.

    python benchmarks/linformer_speed.py --model-dir DIR [--texts FILE] [--n 2000]
                                         [--threads 2] [--steps 30] [--batch-size 96]

``DIR`` must hold a trained shadow model (`plugin.models.linformer_train.train_linformer`);
its tokenizer sets the token counts, which is what speed depends on (not the weights).
``--texts``: one canonical text per line (distinct texts are used); without it, synthetic
canonical-like texts. Prints fp32 and bf16 (CPU) embed throughput over ``--n`` distinct texts,
bf16's worst cosine to fp32, and the mean time of a training step (bf16 autocast where the CPU
has it, as `train_linformer` runs). Numbers only mean something on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugin.models.device import cpu_has_bf16
from plugin.models.linformer import Linformer
from plugin.models.linformer_embedder import LinformerEmbedder
from plugin.models.linformer_train import _TokenSampler


def synthetic(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    images = ["cmd.exe", "powershell.exe", "svchost.exe", "rundll32.exe", "wmiprvse.exe"]
    return [
        f"eid={rng.choice([1, 3, 7, 11, 13])} image=c:\\windows\\system32\\{rng.choice(images)} "
        f"targetobject=hklm\\software\\microsoft\\windows\\currentversion\\run\\k{i} "
        f"details=dword (0x{rng.randrange(1 << 16):04x}) user=nt authority\\system"
        for i in range(n)
    ]


def embed_rate(emb: LinformerEmbedder, texts: list[str], reps: int = 3) -> tuple[float, np.ndarray]:
    emb.embed(texts[:100])  # warm-up
    best, out = 0.0, None
    for _ in range(reps):
        t = time.perf_counter()
        out = emb.embed(texts)
        best = max(best, len(texts) / (time.perf_counter() - t))
    return best, out


def step_time(emb: LinformerEmbedder, texts: list[str], steps: int, batch_size: int) -> float:
    model = Linformer(emb.model.cfg)
    model.load_state_dict(emb.model.state_dict())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    sample = _TokenSampler(emb.token_ids(texts), batch_size, 6144)
    times = []
    for step in range(steps + 3):
        gen = torch.Generator().manual_seed(step)
        ids, lengths = sample(gen)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16()):
            loss, _ = model.mlm_loss(ids, lengths, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.mean(times[3:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--texts")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.texts:
        lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
        texts = list(dict.fromkeys(t for t in lines if t))
        random.Random(0).shuffle(texts)
        texts = texts[: args.n]
    else:
        texts = synthetic(args.n)
    fp32 = LinformerEmbedder.from_dir(args.model_dir, device="cpu", cpu_bf16=False)
    bf16 = LinformerEmbedder.from_dir(args.model_dir, device="cpu", cpu_bf16=True)
    tokens = np.mean([len(s) for s in fp32.token_ids(texts)])
    r32, v32 = embed_rate(fp32, texts)
    r16, v16 = embed_rate(bf16, texts)
    cos = float((v32 * v16).sum(1).min())
    print(f"texts {len(texts)}  mean tokens {tokens:.1f}  threads {args.threads}  "
          f"cpu bf16 native: {cpu_has_bf16()}")
    print(f"embed fp32 {r32:.0f} texts/s   bf16 {r16:.0f} texts/s   worst cosine bf16 vs fp32 {cos:.4f}")
    st = step_time(fp32, texts, args.steps, args.batch_size)
    print(f"train step (batch {args.batch_size}) {st:.3f} s")


if __name__ == "__main__":
    main()
