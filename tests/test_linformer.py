"""The shadow model: BPE tokenizer, Linformer padding mask, training, model directory, embedder.

Tiny configs and corpora built in code, so the whole file runs in seconds on CPU.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from models.blt_helpers import micro_model

from plugin.models import training
from plugin.models.bpe import CLS, PAD, SPECIAL_TOKENS, clean_text, load_bpe, save_bpe, train_bpe
from plugin.models.checkpoint import ModelDirError, load_blt, read_config, save_blt
from plugin.models.linformer import (
    Linformer,
    LinformerConfig,
    batch_ids,
    load_linformer,
    save_linformer,
)
from plugin.models.linformer_embedder import LinformerEmbedder, has_linformer
from plugin.models.linformer_train import STATE_DIR, linformer_card_section, train_linformer

TINY = {"dim": 32, "vocab_size": 300, "layers": 1, "heads": 2, "k": 16, "max_len": 48,
        "steps": 40, "batch_size": 16, "progress": False, "bf16": False, "lr": 3e-3}


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Canonical-like texts of varied length (a few past the tiny max_len in tokens)."""
    rng = random.Random(seed)
    images = ["cmd.exe", "powershell.exe", "svchost.exe", "chrome.exe", "rundll32.exe"]
    out = []
    for i in range(n):
        eid = rng.choice([1, 3, 11, 13])
        t = (f"eid={eid} image=c:\\windows\\system32\\{rng.choice(images)} "
             f"commandline={rng.choice(['whoami', 'net user', 'ipconfig /all'])} {i} "
             f"user=<domain>\\<user> port={rng.randrange(65536)}")
        if i % 17 == 0:
            t += " targetfilename=" + "\\".join(rng.choice(["temp", "appdata", "local", "x"])
                                                for _ in range(rng.randrange(5, 40)))
        out.append(t)
    return out


def blt_dir(path):
    save_blt(path, micro_model())
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = blt_dir(tmp_path_factory.mktemp("lf"))
    stats = train_linformer(corpus(), d, **TINY)
    return d, stats


@pytest.fixture(scope="module")
def emb(trained):
    return LinformerEmbedder.from_dir(trained[0], device="cpu", cpu_bf16=False)


# --- (a) padding mask ---------------------------------------------------------------------------
def test_vector_independent_of_batch_padding(emb):
    texts = corpus(40, seed=5)
    short = min(texts, key=len)
    longer = [t + " " + "x\\" * 200 for t in texts[:10]]  # truncated at max_len: much longer
    alone = emb.embed([short])[0]
    emb_big = LinformerEmbedder(emb.model, emb.tokenizer, emb.versions, device="cpu",
                                cpu_bf16=False, max_batch_tokens=10**6)  # one padded batch
    batched = emb_big.embed([*longer, short, *texts])
    np.testing.assert_allclose(batched[len(longer)], alone, atol=1e-5)
    np.testing.assert_allclose(batched[len(longer) + 1:], emb.embed(texts), atol=1e-5)


@pytest.mark.parametrize("share", ["none", "kv", "layerwise"])
def test_model_level_padding_changes_nothing(share):
    torch.manual_seed(0)
    cfg = LinformerConfig(vocab_size=50, dim=32, layers=2, heads=2, k=8, max_len=40, share=share)
    m = Linformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    seqs = [[CLS, *torch.randint(4, 50, (n,), generator=g).tolist()] for n in (3, 9, 14)]
    ids, lengths = batch_ids(seqs)
    with torch.no_grad():
        ref_h, ref_v = m.hidden(ids, lengths), m.encode(ids, lengths)
        # 20 more padded columns, filled with real-looking tokens: must not reach real tokens
        pad = torch.randint(4, 50, (3, 20), generator=g)
        wide = torch.cat([ids, pad], dim=1)
        for i, n in enumerate(lengths.tolist()):
            wide[i, n:] = torch.randint(4, 50, (wide.shape[1] - n,), generator=g)
        h, v = m.hidden(wide, lengths), m.encode(wide, lengths)
    torch.testing.assert_close(v, ref_v, atol=1e-5, rtol=0)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(h[i, :n], ref_h[i, :n], atol=1e-5, rtol=0)
    assert m.proj.__len__() == {"none": 4, "kv": 2, "layerwise": 1}[share]


def test_bad_sharing_option():
    with pytest.raises(ValueError, match="share"):
        LinformerConfig(share="heads")


# --- (b) determinism ----------------------------------------------------------------------------
def test_same_seed_same_version(tmp_path, trained):
    texts = corpus()
    stats = train_linformer(texts, blt_dir(tmp_path / "a"), **TINY)
    assert stats["versions"] == trained[1]["versions"]
    other = train_linformer(texts, blt_dir(tmp_path / "b"), seed=1, **{**TINY, "steps": 2})
    assert other["versions"]["linformer"] != stats["versions"]["linformer"]


# --- (c) tokenizer ------------------------------------------------------------------------------
ODD = [
    "", " ", "a", "eid=1 image=c:\\windows\\system32\\cmd.exe",
    "naïve café 日本語 עברית 🙂👍🏽 e\u0301", "tab\there\r\nnul\x00bell\x07", "  double  spaces ",
    "\\\\?\\unc\\path//x==y", "\ufeffbom \U0010ffff",
]


def test_bpe_round_trip_and_specials():
    tok = train_bpe(corpus(200), vocab_size=300)
    assert [tok.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    for s in ODD:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert 1 not in ids  # byte level: never [UNK]
        assert tok.decode(ids) == s
    raw = bytes(range(256)) + b"\xff\xfe"  # invalid UTF-8 is replaced, never an error
    s = clean_text(raw)
    assert tok.decode(tok.encode(s).ids) == s
    assert clean_text("lone \ud800 surrogate") == "lone ? surrogate"


def test_bpe_deterministic():
    a, b = train_bpe(corpus(200), vocab_size=300), train_bpe(corpus(200), vocab_size=300)
    assert a.to_str() == b.to_str()


def test_bpe_saved_loaded_same_ids(tmp_path):
    d = blt_dir(tmp_path)
    tok = train_bpe(corpus(200), vocab_size=300)
    entry = save_bpe(d, tok)
    cfg = read_config(d)
    assert cfg["models"]["bpe"]["sha256"] == entry["sha256"] and "blt" in cfg["models"]
    loaded = load_bpe(d)
    for s in ODD + corpus(20, seed=3):
        assert loaded.encode(s).ids == tok.encode(s).ids


def test_bpe_tampered_or_missing(tmp_path):
    d = blt_dir(tmp_path)
    save_bpe(d, train_bpe(corpus(100), vocab_size=300))
    path = d / "bpe.tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["vocab"]["zz"] = 299  # still valid JSON: only the sha256 can tell
    path.write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match=r"bpe\.tokenizer\.json.*sha256"):
        load_bpe(d)
    path.unlink()
    with pytest.raises(ModelDirError, match=r"bpe\.tokenizer\.json.*missing"):
        load_bpe(d)


# --- (d) training -------------------------------------------------------------------------------
def test_training_lowers_mlm_loss_and_keeps_blt(trained):
    d, stats = trained
    assert stats["final_loss"] < stats["first_loss"] - 0.5, stats
    assert 0.0 <= stats["heldout_masked_accuracy"] <= 1.0 and stats["held_out_texts"] >= 1
    assert stats["vocab_size"] <= 300 and stats["dim"] == 32 and stats["params"] > 0
    cfg = read_config(d)
    assert {"blt", "entropy", "linformer", "bpe"} <= set(cfg["models"])
    assert cfg["linformer_training"]["versions"] == stats["versions"]
    assert cfg["models"]["linformer"]["config"]["dim"] == 32
    load_blt(d)  # the BLT is untouched
    card = linformer_card_section(stats)
    assert card.startswith("## Shadow model: Linformer") and "masked-token accuracy" in card


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """An interrupted training, rerun, continues from its last checkpoint and ends with the
    weights (and loss history) of an uninterrupted one."""
    opts = {**TINY, "steps": 8, "checkpoint_every": 3}
    full = train_linformer(corpus(), blt_dir(tmp_path / "full"), **opts)

    real_update = training.Progress.update
    calls = {"n": 0}

    def crash_on_fifth(self, loss):
        calls["n"] += 1
        if calls["n"] == 5:  # state saved after step 3, not yet after step 6
            raise KeyboardInterrupt
        real_update(self, loss)

    d = blt_dir(tmp_path / "resumed")
    monkeypatch.setattr(training.Progress, "update", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train_linformer(corpus(), d, **opts)
    assert json.loads((d / STATE_DIR / "state.json").read_text())["step"] == 3

    def count(self, loss):
        calls["n"] += 1
        real_update(self, loss)

    calls["n"] = 0
    monkeypatch.setattr(training.Progress, "update", count)
    resumed = train_linformer(corpus(), d, **opts)
    assert calls["n"] == 5  # steps 3..7 only
    for name in ("linformer.safetensors", "bpe.tokenizer.json"):
        assert (tmp_path / "full" / name).read_bytes() == (d / name).read_bytes()
    assert resumed["versions"] == full["versions"]
    for key in ("first_loss", "final_loss"):  # the history survived the interruption
        assert resumed[key] == full[key]
    assert not (d / STATE_DIR).exists()


def test_changed_options_start_over(tmp_path, monkeypatch):
    """A saved state from other options is not resumed: the run starts from step 0."""
    d = blt_dir(tmp_path)
    real_update = training.Progress.update
    calls = {"n": 0}

    def crash_on_fifth(self, loss):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_update(self, loss)

    monkeypatch.setattr(training.Progress, "update", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train_linformer(corpus(), d, **{**TINY, "steps": 8, "checkpoint_every": 3})
    monkeypatch.setattr(training.Progress, "update", real_update)
    stats = train_linformer(corpus(), d, **{**TINY, "steps": 8, "checkpoint_every": 3, "lr": 1e-3})
    assert stats["steps"] == 8 and not (d / STATE_DIR).exists()
    fresh = train_linformer(corpus(), blt_dir(tmp_path / "fresh"),
                            **{**TINY, "steps": 8, "checkpoint_every": 3, "lr": 1e-3})
    assert stats["versions"] == fresh["versions"]


def test_train_needs_model_dir_and_known_options(tmp_path):
    with pytest.raises(ModelDirError):
        train_linformer(corpus(20), tmp_path / "nope", **TINY)
    with pytest.raises(TypeError, match="lyers"):
        train_linformer(corpus(20), blt_dir(tmp_path), **TINY, lyers=3)


# --- (e) model directory round trip ------------------------------------------------------------
def test_save_load_identical_vectors(tmp_path, emb):
    d = blt_dir(tmp_path)
    torch.manual_seed(3)
    model = Linformer(LinformerConfig(vocab_size=300, dim=32, layers=1, heads=2, k=16, max_len=48))
    tok = train_bpe(corpus(100), vocab_size=300)
    save_linformer(d, model.eval())
    entry = save_bpe(d, tok)
    loaded, lentry = load_linformer(d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    texts = corpus(30, seed=9)
    versions = {"linformer": lentry["version"], "bpe": entry["sha256"]}
    mem = LinformerEmbedder(model, tok, versions, device="cpu", cpu_bf16=False)
    disk = LinformerEmbedder.from_dir(d, device="cpu", cpu_bf16=False)
    assert np.array_equal(mem.embed(texts), disk.embed(texts))
    assert disk.version == mem.version and len(disk.version) == 16
    assert disk.version != emb.version


def test_dir_without_linformer(tmp_path):
    d = blt_dir(tmp_path)
    assert not has_linformer(d) and not has_linformer(tmp_path / "none")
    with pytest.raises(ModelDirError, match="'linformer' and 'bpe' missing"):
        LinformerEmbedder.from_dir(d)


def test_has_linformer_and_tampered_weights(tmp_path, trained):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(trained[0], d)
    assert has_linformer(d)
    with open(d / "linformer.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelDirError, match=r"linformer\.safetensors.*sha256"):
        LinformerEmbedder.from_dir(d)


# --- (f) truncation and the empty text ----------------------------------------------------------
def test_truncation_and_empty_text(emb):
    long = "eid=1 " + " ".join(f"w{i}\\p{i}" for i in range(400))
    ids = emb.token_ids([long, "", "eid=1"])
    assert len(ids[0]) == emb.max_len and ids[0][0] == CLS
    assert ids[1] == [CLS]
    v = emb.embed([long, long + " more words at the end", ""])
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # only the first max_len tokens count
    assert np.isfinite(v).all() and abs(np.linalg.norm(v[2]) - 1) < 1e-5


# --- (g) output contract ------------------------------------------------------------------------
def test_shape_dtype_norm_order(emb):
    texts = corpus(50, seed=11)
    v = emb.embed(texts)
    assert v.shape == (50, emb.dim) and v.dtype == np.float32 and emb.dim == 32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    rev = emb.embed(texts[::-1])
    np.testing.assert_allclose(rev[::-1], v, atol=1e-5)
    one = np.stack([emb.embed([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(one, v[:5], atol=1e-5)
    assert emb.embed([]).shape == (0, emb.dim)
    assert emb.name == "linformer"


def test_cpu_bf16_close_to_fp32(trained, emb):
    texts = corpus(60, seed=12)
    bf = LinformerEmbedder.from_dir(trained[0], device="cpu", cpu_bf16=True)
    assert bf.precision == "bf16" and bf.version == emb.version
    cos = (bf.embed(texts) * emb.embed(texts)).sum(1)
    assert cos.min() >= 0.99, cos.min()


def test_pad_id_is_zero():
    assert PAD == 0 and CLS == 2
