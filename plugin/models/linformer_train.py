"""Train the shadow model (BPE tokenizer + Linformer, masked LM) into an existing model directory.

`train_linformer` does, in order:

1. distinct texts (first-seen order); a seeded 2% of them held out for the accuracy figure;
2. the BPE tokenizer on the rest (`plugin.models.bpe`);
3. masked LM (BERT recipe: 15% of the real tokens after [CLS]; 80% -> [MASK], 10% -> a random
   token, 10% kept), AdamW, linear warm-up then cosine to 10% of the peak rate, batches of
   texts of similar token count (little padding);
4. masked-token accuracy on the held-out texts (fixed masks, eval mode, fp32);
5. ``linformer.safetensors`` + ``bpe.tokenizer.json`` and their ``config.json`` entries; the
   stats under ``linformer_training``. Other entries (the BLT, clusters, ``training``) are kept.

Step 3 runs the loop the BLT's training runs (`plugin.models.training`): bf16 autocast for the
forward pass where the CPU has native bf16 (``bf16="auto"``), fp32 weights and optimizer; every
step reseeds torch from ``(seed, "linformer", step)``, so a seed gives the same weights on a
machine type. Resumable the same way: every ``checkpoint_every`` steps the model and optimizer go
to ``model_dir/.train_state_linformer/``; a rerun with the same texts and options redoes steps 1
and 2 (deterministic, seconds) and continues the masked LM from there. The state is removed once
the shadow model is written.

Budget: the defaults (`DEFAULT_STEPS` of 96 texts, lr 2e-3) fit the 8-minute budget for ~50,000
distinct texts on 2 CPU cores with room to spare: measured on 50,000 real canonical texts, 250 s
in all (0.16 s/step; BPE, tokenizing and evaluation ~10 s), MLM loss 8.34 -> 1.66 nats,
masked-token accuracy 64.1% on the held-out texts. Steps slow down when other processes compete
for the cores (0.25 s/step seen, ~6.5 min in all).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from tokenizers import Tokenizer

from plugin.models.bpe import CLS, clean_text, encode_ids, save_bpe, train_bpe
from plugin.models.checkpoint import combined_version, read_config, write_config
from plugin.models.device import wants_cpu_bf16
from plugin.models.linformer import (
    ENTRY,
    Linformer,
    LinformerConfig,
    batch_ids,
    mask_tokens,
    save_linformer,
)
from plugin.models.training import (
    TrainState,
    adamw,
    distinct_texts,
    fingerprint,
    run_steps,
    step_seed,
    tail_mean,
)

log = structlog.get_logger(__name__)

STATS_KEY = "linformer_training"
STATE_DIR = ".train_state_linformer"  # apart from the BLT's, which may share the directory
DEFAULT_STEPS = 1500  # ~0.16 s/step (batch 96, ~32 tokens/text, bf16) on 2 idle CPU cores: ~4 min


@dataclass
class LinformerTrainConfig:
    steps: int = DEFAULT_STEPS
    batch_size: int = 96  # texts per step
    max_batch_tokens: int = 6144  # cap on rows x longest, for batches of long texts
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.05  # share of steps with linear warm-up, then cosine to 10%
    holdout: float = 0.02  # share of distinct texts held out for the masked-token accuracy
    vocab_size: int = 4096
    checkpoint_every: int = 100
    seed: int = 0
    bf16: bool | str = "auto"


class _TokenSampler:
    """Random batches of distinct texts of similar token count (little padding).

    Each step draws an anchor text, then ``batch_size`` texts at random among those whose
    length is within a factor ``spread`` of the anchor's (widened to the nearest ``batch_size``
    texts by length when that band is too small), fewer when ``batch_size`` texts of the band's
    longest length would pass ``max_tokens``: the few long texts would otherwise make steps
    several times slower than the mean.
    """

    def __init__(
        self, seqs: list[list[int]], batch_size: int, max_tokens: int, spread: float = 1.25
    ):
        self.seqs = seqs
        self.bs = min(batch_size, len(seqs))
        self.max_tokens = max_tokens
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.float64)
        self.lengths, self.order = torch.sort(lengths, stable=True)
        self.spread = spread

    def __call__(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.seqs)
        anchor = int(torch.randint(n, (1,), generator=gen))
        L = float(self.lengths[anchor])
        lo = int(torch.searchsorted(self.lengths, L / self.spread - 1, right=False))
        hi = int(torch.searchsorted(self.lengths, L * self.spread + 1, right=True))
        if hi - lo < self.bs:
            lo = max(0, min(anchor - self.bs // 2, n - self.bs))
            hi = lo + self.bs
        bs = min(self.bs, max(1, self.max_tokens // int(self.lengths[hi - 1])))
        pick = lo + torch.randperm(hi - lo, generator=gen)[:bs]
        idx = self.order[pick].sort().values.tolist()
        return batch_ids([self.seqs[i] for i in idx])


def _fingerprint_items(corpus: list[str], tok: Tokenizer) -> list[bytes]:
    """What a saved state must have been trained on: the distinct texts (hence the held-out
    split, given the seed in the options) and the tokenizer (hence the token ids)."""
    return [*(t.encode("utf-8") for t in corpus), tok.to_str().encode("utf-8")]


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` -> (LinformerTrainConfig fields, LinformerConfig fields); others are errors."""
    tfields = {f.name for f in dataclasses.fields(LinformerTrainConfig)}
    mfields = {f.name for f in dataclasses.fields(LinformerConfig)} - {"vocab_size", "out_dim", "dim"}
    unknown = sorted(set(options) - tfields - mfields)
    if unknown:
        raise TypeError(f"unknown train_linformer options {unknown}")
    return ({k: v for k, v in options.items() if k in tfields},
            {k: v for k, v in options.items() if k in mfields})


def train_linformer(
    texts: Sequence[str],
    model_dir: str | Path,
    *,
    dim: int = 128,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    vocab_size: int = 4096,
    progress: bool = True,
    bf16: bool | str = "auto",
    resume: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Train the BPE tokenizer and the Linformer on ``texts``; write them into ``model_dir``.

    ``model_dir`` must already be a model directory (it holds the BLT; its entries are kept).
    ``dim``: the pooled vector size, and the model width (as the BLT's latent width is its
    vector size), so the two models' vectors have the same size. ``options``: other
    `LinformerTrainConfig` fields (``lr``, ``warmup``...) or `LinformerConfig` fields
    (``layers``, ``heads``, ``k``, ``share``, ``max_len``, ``ff_mult``, ``dropout``).
    ``resume``: continue from the state an interrupted run with the same texts and options left.
    Returns the training stats (also stored in ``config.json`` under ``linformer_training``).
    """
    model_dir = Path(model_dir)
    read_config(model_dir)  # fail now, not after training, when the directory is not one
    topts, mopts = _split_options(options)
    tc = LinformerTrainConfig(seed=seed, vocab_size=vocab_size, bf16=bf16, **topts)
    if steps is not None:
        tc.steps = steps
    if batch_size is not None:
        tc.batch_size = batch_size

    t0 = time.perf_counter()
    corpus = distinct_texts(clean_text(t) for t in texts)
    if len(corpus) < 2:
        raise ValueError("need at least 2 distinct texts to train the shadow model")
    gen = torch.Generator().manual_seed(step_seed(seed, "linformer:holdout", 0))
    perm = torch.randperm(len(corpus), generator=gen).tolist()
    n_hold = max(1, round(len(corpus) * tc.holdout)) if len(corpus) >= 10 else 0
    held = sorted(perm[:n_hold])
    train_idx = sorted(perm[n_hold:])
    train_texts = [corpus[i] for i in train_idx]

    # 1. tokenizer
    tok = train_bpe(train_texts, vocab_size=tc.vocab_size, seed=seed)
    cfg = LinformerConfig(vocab_size=tok.get_vocab_size(), dim=dim, out_dim=dim, **mopts)
    tok.enable_truncation(max_length=cfg.max_len - 1)

    def encode(batch: list[str]) -> list[list[int]]:
        return [[CLS, *ids] for ids in encode_ids(tok, batch)]

    seqs = encode(train_texts)
    held_seqs = encode([corpus[i] for i in held])
    tok.no_truncation()
    n_trunc = sum(len(s) >= cfg.max_len for s in seqs)

    # 2. masked LM
    state = TrainState(model_dir / STATE_DIR,
                       fingerprint([asdict(tc), cfg.to_dict()], _fingerprint_items(corpus, tok)),
                       phase="linformer")
    torch.manual_seed(seed)
    model = Linformer(cfg)
    opt = adamw(model.parameters(), tc.lr, tc.weight_decay)
    tensors = state.load() if resume else None
    resumed_at = 0
    if tensors is not None:
        state.restore(model, opt, tensors)
        resumed_at = state.meta["step"]
        log.info("linformer_train_resumed", step=resumed_at, dir=str(state.dir))
    use_bf16 = wants_cpu_bf16(tc.bf16)
    tc.bf16 = use_bf16  # record what ran (after the fingerprint, which keeps the request)
    sample = _TokenSampler(seqs, tc.batch_size, tc.max_batch_tokens)
    log.info("linformer_train_start", texts=len(corpus), held_out=len(held),
             vocab_size=cfg.vocab_size, mean_tokens=sum(map(len, seqs)) / len(seqs),
             steps=tc.steps, batch_size=tc.batch_size, bf16=use_bf16, seed=seed)

    def mlm_step(gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        ids, lengths = sample(gen)
        return model.mlm_loss(ids, lengths, gen)

    t_train = time.perf_counter()
    hist = run_steps(model, opt, state, mlm_step, phase="linformer", total=tc.steps, lr=tc.lr,
                     warmup=tc.warmup, seed=seed, bf16=use_bf16,
                     checkpoint_every=tc.checkpoint_every, progress=progress)
    train_seconds = time.perf_counter() - t_train

    # 3. held-out accuracy, 4. the model directory
    held_acc, held_loss = heldout_accuracy(model, held_seqs, seed)
    entry = save_linformer(model_dir, model)
    bpe_entry = save_bpe(model_dir, tok)
    n_params = sum(p.numel() for p in model.parameters())
    stats = {
        "train_config": asdict(tc),
        "model": cfg.to_dict(),
        "dim": model.dim,
        "texts": len(corpus),
        "held_out_texts": len(held),
        "vocab_size": tok.get_vocab_size(),
        "mean_tokens_per_text": sum(map(len, seqs)) / len(seqs),  # [CLS] included
        "truncated_share": n_trunc / len(seqs),
        "steps": tc.steps,
        "first_loss": hist[0]["loss"] if hist else None,
        "final_loss": tail_mean(hist),
        "final_train_acc": tail_mean(hist, "acc"),
        "heldout_masked_accuracy": held_acc,
        "heldout_loss": held_loss,
        "params": n_params,
        "step_seconds": train_seconds / max(1, tc.steps - resumed_at),  # the steps this run ran
        "seconds": time.perf_counter() - t0,
        "versions": {
            ENTRY: entry["version"],
            "bpe": bpe_entry["sha256"][:16],
            "embedder": combined_version({ENTRY: entry["version"], "bpe": bpe_entry["sha256"]}),
        },
    }
    full = read_config(model_dir)
    full[STATS_KEY] = stats
    write_config(model_dir, full)
    state.clear()
    log.info("linformer_written", dir=str(model_dir), version=stats["versions"]["embedder"],
             first_loss=stats["first_loss"], final_loss=stats["final_loss"],
             heldout_acc=held_acc, seconds=round(stats["seconds"], 1))
    return stats


@torch.no_grad()
def heldout_accuracy(
    model: Linformer, seqs: list[list[int]], seed: int, batch: int = 128
) -> tuple[float | None, float | None]:
    """Masked-token accuracy and mean loss on ``seqs`` (fixed seeded masks, eval mode, fp32)."""
    if not seqs:
        return None, None
    model.eval()
    gen = torch.Generator().manual_seed(step_seed(seed, "linformer:eval", 0))
    seqs = sorted(seqs, key=len)
    correct = total = 0
    loss_sum = 0.0
    for i in range(0, len(seqs), batch):
        ids, lengths = batch_ids(seqs[i:i + batch])
        inputs, where, targets = mask_tokens(ids, lengths, model.cfg.mask_prob,
                                             model.cfg.vocab_size, gen)
        logits = model.mlm_logits(model.hidden(inputs, lengths)[where]).float()
        correct += int((logits.argmax(-1) == targets).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        total += int(targets.numel())
    return correct / max(1, total), loss_sum / max(1, total)


def linformer_card_section(stats: dict[str, Any]) -> str:
    """Markdown for the model card: the shadow model's architecture, tokenizer, objective and
    training numbers (from the stats `train_linformer` returns)."""
    m, tc = stats["model"], stats["train_config"]
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"
    share = {"none": "own E and F per layer", "kv": "E = F (key-value sharing) per layer",
             "layerwise": "one E for keys and values of all layers"}[m["share"]]
    acc = stats["heldout_masked_accuracy"]
    lines = [
        "## Shadow model: Linformer",
        "",
        ("Linformer encoder (written from the Linformer paper, Wang et al. 2020). It embeds the "
        "same traffic as the BLT, its vectors are stored side by side, and it never decides an "
        "alert."),
        "",
        (f"- architecture: {m['layers']} pre-LN layers, width {m['dim']}, {m['heads']} heads, "
        f"MLP x{m['ff_mult']}; keys and values projected along the sequence from up to "
        f"{m['max_len']} tokens to k = {m['k']} ({share}); padded positions zeroed before the "
        f"projection; vector = mean of the final states over real tokens, linear to "
        f"{stats['dim']} dimensions, L2-normalized"),
        (f"- tokenizer: byte-level BPE, {stats['vocab_size']} ids incl. [PAD] [UNK] [CLS] [MASK], "
        f"split before whitespace, `\\`, `/` and `=`; {stats['mean_tokens_per_text']:.1f} tokens "
        f"per text on average ([CLS] included), {100 * stats['truncated_share']:.2f}% of texts "
        f"truncated to {m['max_len']} tokens"),
        ("- objective: masked LM (15% of tokens; 80% [MASK], 10% random, 10% kept), output layer "
        "tied to the token embedding"),
        (f"- training: {stats['texts']} distinct texts ({stats['held_out_texts']} held out), "
        f"{stats['steps']} steps of {tc['batch_size']} texts, AdamW lr {tc['lr']} (warm-up + "
        f"cosine), seed {tc['seed']}, bf16 autocast: {tc['bf16']}, {stats['seconds']:.0f} s on CPU"),
        (f"- MLM loss {fmt(stats['first_loss'])} -> {fmt(stats['final_loss'])} nats; masked-token "
        f"accuracy on the held-out texts: {'n/a' if acc is None else f'{100 * acc:.1f}%'}"),
        f"- {stats['params']:,} parameters",
    ]
    return "\n".join(lines) + "\n"
