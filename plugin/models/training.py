"""The training loop both trainers run (`plugin.models.train` for the BLT and its entropy model,
`plugin.models.linformer_train` for the shadow model), so they seed, schedule, checkpoint and
resume the same way.

* **Determinism**: every step reseeds torch from ``(seed, phase, step)`` (dropout, masking) and
  hands the step a generator seeded from ``(seed, phase + ":data", step)`` (batch choice), so a
  step's outcome depends only on the weights and optimizer state it starts from: a resumed run
  continues exactly where it stopped, and a seed gives the same weights on a machine type.
* **Schedule**: AdamW (betas 0.9/0.98), linear warm-up over a share of the steps, then cosine to
  10% of the peak rate; gradients clipped to norm 1.
* **Mixed precision**: the step's forward runs under bf16 autocast when asked (the trainers
  resolve ``bf16="auto"`` with `plugin.models.device.wants_cpu_bf16`); weights, optimizer and
  losses stay fp32.
* **Resumable**: every ``checkpoint_every`` steps the model, the optimizer state and a JSON
  ``meta`` (phase, step, loss history, the trainer's extras) go to a state directory
  (safetensors + JSON, never pickle), keyed by a fingerprint of the texts and options; a rerun
  with the same fingerprint continues from there, another fingerprint starts over.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = structlog.get_logger(__name__)

# one step: the batch generator in, (loss to minimize, loss parts for the history) out
StepFn = Callable[[torch.Generator], tuple[torch.Tensor, dict[str, float]]]


def distinct_texts(texts: Iterable[str]) -> list[str]:
    """Distinct texts in first-seen order (the corpus repeats texts; we train on each once)."""
    return list(dict.fromkeys(texts))


def fingerprint(options: Any, items: Iterable[bytes]) -> str:
    """sha256 over the options (JSON, sorted keys) and every item's sha256: what a saved state
    must match to be resumed (other texts or options start over)."""
    return hashlib.sha256(
        json.dumps(options, sort_keys=True, default=str).encode()
        + b"".join(hashlib.sha256(b).digest() for b in items)
    ).hexdigest()


def step_seed(seed: int, phase: str, step: int) -> int:
    """A 63-bit seed for one step of one phase, independent of every other step's."""
    h = hashlib.sha256(f"{seed}:{phase}:{step}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def scheduled_lr(base: float, step: int, total: int, warmup: float) -> float:
    """Learning rate at ``step``: linear warm-up over a ``warmup`` share of ``total``, then
    cosine to 10% of ``base``."""
    w = max(1, int(total * warmup))
    if step < w:
        return base * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The optimizer of every phase (per-tensor loop, not foreach: the trained weights depend on
    it bit for bit)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98),
                             foreach=False)


def tail_mean(hist: list[dict[str, float]], key: str = "loss", n: int = 20) -> float | None:
    """Mean of ``key`` over the last ``n`` steps of a history (None when it has none)."""
    vals = [h[key] for h in hist[-n:] if key in h]
    return sum(vals) / len(vals) if vals else None


class Progress:
    """tqdm on stderr when available, else a plain stderr line every few steps."""

    def __init__(self, total: int, desc: str, initial: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.total, self.desc, self.n = total, desc, initial
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, leave=False)
        except ImportError:  # pragma: no cover
            pass

    def update(self, loss: float) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.n % 20 == 0 or self.n == self.total):
            print(f"{self.desc} {self.n}/{self.total} loss={loss:.4f}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainState:
    """Where a run stands, and its state directory.

    ``meta`` (JSON): ``fingerprint``, ``phase`` and ``step`` (the next step to run), ``history``
    (per phase, one dict of loss parts per step) and whatever the trainer adds (the BLT's
    calibrated threshold). The tensors (safetensors): ``model.NAME`` for the model's state and
    ``opt.PARAM.FIELD`` for the optimizer state of each parameter, by parameter name.
    """

    def __init__(self, directory: Path, fingerprint: str, phase: str):
        self.dir = directory
        self.meta: dict[str, Any] = {"fingerprint": fingerprint, "phase": phase, "step": 0,
                                     "history": {}}

    def load(self) -> dict[str, torch.Tensor] | None:
        """Take the saved meta and return the saved tensors (for `restore`); None, with the
        fresh meta kept, when there is no state, it is unreadable, or its fingerprint differs."""
        try:
            meta = json.loads((self.dir / "state.json").read_text())
            tensors = load_file(str(self.dir / "state.safetensors"))
        except (OSError, ValueError) as e:
            if self.dir.exists():
                log.warning("train_state_unreadable", dir=str(self.dir), error=str(e))
            return None
        if meta.get("fingerprint") != self.meta["fingerprint"]:
            log.warning("train_state_mismatch", dir=str(self.dir),
                        note="texts or options changed; starting over")
            return None
        self.meta = meta
        return tensors

    @staticmethod
    def restore(
        model: nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
    ) -> None:
        """Put the saved weights into ``model`` and the saved optimizer state into ``opt``."""
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        params = dict(model.named_parameters())
        for key, val in tensors.items():
            if key.startswith("opt."):
                pname, field = key[4:].rsplit(".", 1)
                opt.state[params[pname]][field] = val.clone()

    def save(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Write the model, ``opt``'s state and the meta (each file replaced atomically)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        names = {id(p): n for n, p in model.named_parameters()}
        tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
        for group in opt.param_groups:
            for p in group["params"]:
                for key, val in opt.state.get(p, {}).items():
                    tensors[f"opt.{names[id(p)]}.{key}"] = torch.as_tensor(val).detach().clone()
        save_file(tensors, str(self.dir / "state.safetensors.tmp"))
        os.replace(self.dir / "state.safetensors.tmp", self.dir / "state.safetensors")
        (self.dir / "state.json.tmp").write_text(json.dumps(self.meta, indent=1))
        os.replace(self.dir / "state.json.tmp", self.dir / "state.json")

    def clear(self) -> None:
        """Remove the state directory (the run is complete)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def run_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    state: TrainState,
    step_fn: StepFn,
    *,
    phase: str,
    total: int,
    lr: float,
    warmup: float,
    seed: int,
    bf16: bool,
    checkpoint_every: int,
    progress: bool,
) -> list[dict[str, float]]:
    """Run steps of ``phase`` up to ``total``, from where ``state`` stands when it is in this
    phase (else from 0), saving ``state`` every ``checkpoint_every`` steps.

    ``step_fn`` gets the step's data generator and returns ``(loss, parts)``; it runs under bf16
    autocast when ``bf16``. Gradients of every parameter ``opt`` holds are clipped to norm 1.
    Leaves the model in eval mode; returns the phase's history (``parts`` of every step).
    """
    model.train()
    meta = state.meta
    start = meta["step"] if meta["phase"] == phase else 0
    bar = Progress(total, phase, start, progress)
    hist = meta["history"].setdefault(phase, [])
    params = [p for g in opt.param_groups for p in g["params"]]
    for step in range(start, total):
        torch.manual_seed(step_seed(seed, phase, step))
        gen = torch.Generator().manual_seed(step_seed(seed, phase + ":data", step))
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(lr, step, total, warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, parts = step_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hist.append(parts)
        bar.update(parts["loss"])
        done = step + 1
        if done % checkpoint_every == 0 and done < total:
            meta.update(phase=phase, step=done)
            state.save(model, opt)
    bar.close()
    model.eval()
    return hist
