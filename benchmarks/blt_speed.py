"""BLT embedding speed on CPU: distinct texts/s and mean bytes per patch, per model size.

    python benchmarks/blt_speed.py [--texts FILE] [--n 2000] [--sizes tiny,small,base]
                                   [--threads 2] [--model-dir DIR]

``--texts``: one canonical text per line (distinct texts are used); without it, synthetic
canonical-like Sysmon texts of ~300 bytes. Untrained weights unless ``--model-dir`` is given
(speed does not depend on training; bytes per patch does). Prints fp32 and bf16 (CPU autocast,
where supported) throughput, and bf16's worst cosine to fp32.
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

from plugin.models.blt.byteseq import make_batch, to_bytes  # noqa: E402
from plugin.models.blt.model import BLT, BLTConfig  # noqa: E402
from plugin.models.blt.patching import (  # noqa: E402
    boundary_entropy,
    calibrate_threshold,
    mean_patch_len,
)
from plugin.models.device import cpu_has_bf16  # noqa: E402
from plugin.models.embedder import BLTEmbedder  # noqa: E402

IMAGES = [r"C:\Windows\System32\cmd.exe", r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
          r"C:\Windows\System32\svchost.exe", r"C:\Program Files\Google\Chrome\Application\chrome.exe",
          r"C:\Windows\explorer.exe", r"C:\Windows\System32\rundll32.exe", r"C:\Windows\System32\lsass.exe",
          r"C:\Users\<USER>\AppData\Local\Temp\setup_<HEX>.exe", r"C:\Windows\System32\wbem\WmiPrvSE.exe"]
CMDS = ["cmd /c whoami", "powershell -nop -w hidden -enc <B64>", "svchost.exe -k netsvcs -p -s Schedule",
        "rundll32.exe shell32.dll,Control_RunDLL", "chrome.exe --type=renderer --field-trial-handle=<NUM>",
        "reg query HKLM\\Software\\Microsoft\\Windows\\CurrentVersion\\Run", "net user /domain",
        "schtasks /create /tn Update /tr C:\\Temp\\u.exe /sc minute"]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Distinct canonical-like texts, ~300 bytes each."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        ev = rng.choice([1, 3, 7, 10, 11, 13])
        img, parent = rng.choice(IMAGES), rng.choice(IMAGES)
        parts = [f"event={ev}", f"Image={img}"]
        if ev == 1:
            parts += [f"CommandLine={rng.choice(CMDS)} {rng.randrange(10**6)}",
                      f"CurrentDirectory=C:\\Users\\<USER>\\Documents\\{rng.randrange(500)}",
                      f"ParentImage={parent}", f"ParentCommandLine={rng.choice(CMDS)}",
                      "IntegrityLevel=" + rng.choice(["High", "Medium", "System"])]
        elif ev == 3:
            parts += [f"Protocol={rng.choice(['tcp', 'udp'])}", f"DestinationIp=10.{rng.randrange(256)}"
                      f".{rng.randrange(256)}.{rng.randrange(256)}", f"DestinationPort={rng.randrange(65536)}",
                      f"DestinationHostname=host{rng.randrange(9999)}.corp.example.com"]
        elif ev in (10, 7):
            parts += [f"TargetImage={parent}", f"GrantedAccess=0x{rng.randrange(1 << 20):x}",
                      f"ImageLoaded=C:\\Windows\\System32\\{rng.choice(['ntdll', 'kernel32', 'amsi'])}.dll",
                      f"CallTrace=C:\\Windows\\SYSTEM32\\ntdll.dll+{rng.randrange(1 << 20):x}"]
        else:
            parts += [f"TargetObject=HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\k{rng.randrange(9999)}",
                      f"Details=C:\\ProgramData\\{rng.randrange(10**5)}\\agent.exe",
                      f"TargetFilename=C:\\Users\\<USER>\\AppData\\Roaming\\f{rng.randrange(10**6)}.tmp"]
        parts += ["User=<USER>", f"RuleName={rng.choice(['-', 'technique_id=T1059', 'Usermode'])}"]
        t = " ".join(parts)
        while len(t) < 260:
            t += f" Hashes=SHA256={rng.getrandbits(64):016X}"
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def load_texts(path: str | None, n: int) -> list[str]:
    if not path:
        return synthetic_texts(n)
    seen: dict[str, None] = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            seen.setdefault(line, None)
    return list(seen)[:n]


def bytes_per_patch(emb: BLTEmbedder, texts: list[str]) -> float:
    blobs = [to_bytes(t, emb.max_bytes) for t in texts[:500]]
    ids, layout = make_batch(blobs)
    with torch.inference_mode():
        starts = emb.model.patch_starts(ids, layout)
    return mean_patch_len(starts, layout.n_seq)


def calibrate_untrained(model: BLT, texts: list[str]) -> None:
    """Untrained weights: set the threshold for ~6 bytes/patch so the latent sees real counts."""
    ids, layout = make_batch([to_bytes(t) for t in texts[:300]])
    with torch.inference_mode():
        ent = boundary_entropy(model.entropy.entropies(ids, layout), layout.pos)
    p = model.cfg.patch
    p.threshold, _ = calibrate_threshold(ent, layout.pos, p.target_mean_len, p.mode, p.max_patch_len)


def time_embed(emb: BLTEmbedder, texts: list[str], repeats: int = 1) -> tuple[float, np.ndarray]:
    emb.embed(texts[:64])  # warm-up
    best, vecs = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        vecs = emb.embed(texts)
        best = min(best, time.perf_counter() - t)
    return len(texts) / best, vecs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", help="file with one canonical text per line")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sizes", default="tiny,small,base")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", help="a trained model directory (replaces --sizes)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    texts = load_texts(args.texts, args.n)
    mean_bytes = sum(len(to_bytes(t)) for t in texts) / max(len(texts), 1)
    print(f"{len(texts)} distinct texts, mean {mean_bytes:.0f} bytes, {args.threads} threads, "
          f"cpu bf16: {cpu_has_bf16()}")
    print(f"{'model':<12} {'params':>9} {'bytes/patch':>11} {'fp32 t/s':>9} {'bf16 t/s':>9} {'min cos':>8}")
    runs = []
    if args.model_dir:
        runs.append((Path(args.model_dir).name, lambda **kw: BLTEmbedder.from_dir(args.model_dir, "cpu", **kw)))
    else:
        for size in args.sizes.split(","):
            torch.manual_seed(0)
            model = BLT(BLTConfig.preset(size)).eval()
            calibrate_untrained(model, texts)
            runs.append((size, lambda m=model, **kw: BLTEmbedder(m, {"blt": "untrained"}, "cpu", **kw)))
    for name, make in runs:
        fp32 = make(cpu_bf16=False)
        params = sum(p.numel() for p in fp32.model.parameters())
        bpp = bytes_per_patch(fp32, texts)
        tps32, v32 = time_embed(fp32, texts)
        if cpu_has_bf16():
            tps16, v16 = time_embed(make(cpu_bf16=True), texts)
            cos = float((v32 * v16).sum(1).min())
            print(f"{name:<12} {params:>9,} {bpp:>11.2f} {tps32:>9.0f} {tps16:>9.0f} {cos:>8.5f}")
        else:
            print(f"{name:<12} {params:>9,} {bpp:>11.2f} {tps32:>9.0f} {'-':>9} {'-':>8}")


if __name__ == "__main__":
    main()
