"""`LinformerEmbedder`: the shadow model behind the same interface as `BLTEmbedder`.

Inference choices, made once in ``__init__`` (device, precision and batching by
`plugin.models.embedder_base.Embedder`, as for the BLT):

* device: CUDA when available, else CPU (or what the caller names);
* tokens: ``[CLS]`` + the text's BPE ids, truncated to ``max_len`` tokens in all; the empty text
  is just ``[CLS]``. Lone surrogates are replaced (`plugin.models.bpe.clean_text`);
* layout: texts sorted by token count and cut into right-padded batches of at most
  ``max_batch_tokens`` tokens (rows x longest), so padding is small; output order is input
  order. Padding never changes a vector (see `plugin.models.linformer`). The default, 4096, ran
  faster on CPU than 16384 (the activations of a batch stay in cache);
* precision: bf16 autocast on CUDA. On CPU with ``cpu_bf16`` on (``"auto"``: where the CPU has
  native bf16 instructions) the model runs from a bf16 copy of its weights (the pooling sum
  stays fp32): about 1.4x faster here; cosine to fp32 tested >= 0.99 and printed by
  ``benchmarks/linformer_speed.py``; otherwise fp32.

Speed (2 idle CPU cores, 2000 distinct real canonical texts, ~33 tokens each): about 4,700
texts/s bf16 and 2,800 texts/s fp32 (``benchmarks/linformer_speed.py``).

``version`` is 16 hex digits of sha256 over the Linformer weights version and the tokenizer's
sha256: it changes when either does, and tags every stored shadow vector.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from plugin.models.bpe import BPE_ENTRY, CLS, clean_text, encode_ids, load_bpe_entry
from plugin.models.checkpoint import CONFIG, ModelDirError, has_linformer, read_config
from plugin.models.device import autocast
from plugin.models.embedder_base import Embedder
from plugin.models.linformer import ENTRY, Linformer, batch_ids, load_linformer


__all__ = ["LinformerEmbedder", "has_linformer"]


class LinformerEmbedder(Embedder[list[int]]):
    name = "linformer"
    model: Linformer

    def __init__(
        self,
        model: Linformer,
        tokenizer: Tokenizer,
        versions: dict[str, str],
        device: str | None = None,
        threads: int | None = None,
        cpu_bf16: bool | str = "auto",
        max_batch_tokens: int = 4096,
    ):
        super().__init__(model, versions, device, threads, cpu_bf16, max_batch_tokens)
        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_len = model.cfg.max_len
        self.tokenizer.enable_truncation(max_length=self.max_len - 1)  # + [CLS]

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, device: str | None = None, threads: int | None = None, **kw
    ) -> LinformerEmbedder:
        """Load and verify the shadow model of a model directory.

        Raises `ModelDirError` naming what is missing when the directory has no Linformer or no
        tokenizer, and for any tampered or malformed file.
        """
        model_dir = Path(model_dir)
        models = read_config(model_dir)["models"]
        missing = [n for n in (ENTRY, BPE_ENTRY) if not isinstance(models.get(n), dict)]
        if missing:
            raise ModelDirError(
                model_dir / CONFIG,
                f"no shadow model: {' and '.join(repr(m) for m in missing)} missing from 'models' "
                "(train it with plugin.models.linformer_train.train_linformer)",
            )
        model, entry = load_linformer(model_dir)
        tok, bpe_entry = load_bpe_entry(model_dir)
        if tok.get_vocab_size() > model.cfg.vocab_size:
            raise ModelDirError(
                model_dir / bpe_entry["file"],
                f"tokenizer has {tok.get_vocab_size()} ids, the Linformer only {model.cfg.vocab_size}",
            )
        versions = {ENTRY: entry["version"], BPE_ENTRY: bpe_entry["sha256"]}
        return cls(model, tok, versions, device=device, threads=threads, **kw)

    # --- tokens and batches -------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """``[CLS]`` + BPE ids of every text, at most ``max_len`` in all."""
        return [[CLS, *ids] for ids in encode_ids(self.tokenizer, [clean_text(t) for t in texts])]

    def _inputs(self, texts: Sequence[str]) -> list[list[int]]:
        return self.token_ids(texts)

    def _n_tokens(self, item: list[int]) -> int:
        return len(item)

    def _embed_batch(
        self, texts: Sequence[str], items: list[list[int]], idx: list[int]
    ) -> torch.Tensor:
        ids, lengths = batch_ids([items[i] for i in idx], self.device)
        with autocast(self.device, self.autocast_dtype):
            return self.run_model.encode(ids, lengths)
