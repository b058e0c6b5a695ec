"""The shadow model's tokenizer: byte-level BPE trained on the canonical texts (HF `tokenizers`).

Why these choices:

* **byte level**: the `ByteLevel` pre-tokenizer maps every UTF-8 byte to one of 256 printable
  symbols that are all in the initial alphabet, so any text is encodable without ``[UNK]`` and
  the `ByteLevel` decoder gives the text back byte for byte;
* **split before separators** (``\\s``, ``\\``, ``/``, ``=``; each run of separators starts the
  next piece): canonical texts are ``key=value`` pairs of paths, so pieces are path components
  (``\\system32``, ``\\svchost.exe``) and values (``=setvalue``), which BPE then merges or splits.
  About 30 tokens for a 245-byte text, against 64 with GPT-2's word regex (which cuts
  ``system32`` into ``system`` + ``32``): half the tokens, so the encoder runs twice as fast;
* **special tokens** ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[MASK]`` = 3, before the merges;
* **deterministic**: BPE training has no randomness (ties are broken by the library in a fixed
  order), so the same texts give the same ``bpe.tokenizer.json`` byte for byte.

In a model directory the tokenizer is ``bpe.tokenizer.json``; ``config.json`` records it under
``models["bpe"]`` with its sha256, checked on every load (see `plugin.models.checkpoint`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from plugin.models.checkpoint import (
    ModelDirError,
    file_sha256,
    read_config,
    verified_file,
    write_config,
)

log = structlog.get_logger(__name__)

PAD, UNK, CLS, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
N_SPECIAL = len(SPECIAL_TOKENS)
BPE_FILE = "bpe.tokenizer.json"
BPE_ENTRY = "bpe"
SPLIT_PATTERN = r"[\s\\/=]+"  # separators; each run starts the next piece
MAX_TRAIN_TEXTS = 500_000  # larger corpora: BPE on a seeded sample (the merges barely change)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="merged_with_next"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def train_bpe(texts: Sequence[str], vocab_size: int = 4096, seed: int = 0) -> Tokenizer:
    """A byte-level BPE tokenizer with ``vocab_size`` ids (special tokens included).

    ``seed`` only picks the sample when there are more than ``MAX_TRAIN_TEXTS`` texts; training
    itself is deterministic.
    """
    if vocab_size < N_SPECIAL + 256:
        raise ValueError(f"vocab_size must be at least {N_SPECIAL + 256} (specials + 256 bytes)")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to train the tokenizer on")
    if len(texts) > MAX_TRAIN_TEXTS:
        texts = random.Random(seed).sample(texts, MAX_TRAIN_TEXTS)
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, name in enumerate(SPECIAL_TOKENS):  # the ids the model relies on
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    log.info("bpe_trained", texts=len(texts), vocab_size=tok.get_vocab_size())
    return tok


def clean_text(text: str | bytes) -> str:
    """A text the tokenizer accepts: bytes decoded as UTF-8 and lone surrogates replaced."""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def encode_ids(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """BPE ids of every text (no special tokens; the tokenizer's truncation applies).

    ``encode_batch_fast`` (tokenizers >= 0.21) skips the character offsets we never use.
    """
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(list(texts), add_special_tokens=False)]


def _entry_config(tok: Tokenizer) -> dict[str, Any]:
    return {
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": list(SPECIAL_TOKENS),
        "pre_tokenizer": f"split {SPLIT_PATTERN} (merged with next) + byte level",
    }


def save_bpe(model_dir: Path | str, tok: Tokenizer) -> dict[str, Any]:
    """Write ``bpe.tokenizer.json`` and record it (sha256, config) under ``models["bpe"]``.

    Other entries of ``config.json`` are kept; the directory must already hold one.
    Returns the entry.
    """
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    path = model_dir / BPE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tok.to_str(pretty=False), encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    sha = file_sha256(path)
    entry = {"file": BPE_FILE, "sha256": sha, "version": sha[:16], "config": _entry_config(tok)}
    cfg["models"][BPE_ENTRY] = entry
    write_config(model_dir, cfg)
    return entry


def load_bpe(model_dir: Path | str) -> Tokenizer:
    """The verified tokenizer of a model directory (see `load_bpe_entry`)."""
    return load_bpe_entry(model_dir)[0]


def load_bpe_entry(model_dir: Path | str) -> tuple[Tokenizer, dict[str, Any]]:
    """The verified tokenizer of a model directory and its ``config.json`` entry.

    Raises `ModelDirError` when the entry or the file is missing, the file's sha256 differs from
    the record (modified or corrupted) or it does not parse, or the special tokens moved.
    """
    path, entry = verified_file(model_dir, BPE_ENTRY, "tokenizer", ("file", "sha256"),
                                " (no shadow model trained)")
    try:
        tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        raise ModelDirError(path, f"not a valid tokenizer file: {e}") from None
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise ModelDirError(path, f"special token {name} must have id {i}")
    return tok, entry
