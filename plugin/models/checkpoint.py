"""Model directory: safetensors weights + one JSON config + a model card. Never pickle.

Layout::

    DIR/
      config.json        {"format": "sysmon-blt-model-dir", "format_version": 1,
                          "models": {NAME: {"file", "sha256", "version", "config"}, ...},
                          "training": {...}}        # plus keys other sub-models add
      entropy.safetensors  the entropy model
      blt.safetensors      the BLT (encoder, latent, decoder head)
      MODEL_CARD.md

``sha256`` is over the weight file's bytes (tamper check on load); ``version`` is the first 16
hex digits of sha256 over the tensors themselves (names sorted; name, dtype, shape and raw bytes
of each), so it tags every stored vector and does not depend on the file container.
Every problem with a directory raises `ModelDirError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

FORMAT = "sysmon-blt-model-dir"
FORMAT_VERSION = 1
CONFIG = "config.json"
CARD = "MODEL_CARD.md"


if TYPE_CHECKING:
    import torch


class ModelDirError(ValueError):
    """A model directory is missing a file, or a file is malformed, mismatched or tampered."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _torch():
    """torch, imported on first use: reading a model directory's config (`read_config`) must
    not load it (a process that only stands in for the workers' models never needs it)."""
    import torch

    return torch


def weights_version(tensors: dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of sha256 over the tensors (sorted names; name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(_torch().uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def combined_version(versions: dict[str, str]) -> str:
    """An embedder's version from its parts' (weights, tokenizer): 16 hex of sha256 over
    ``name=version`` pairs in name order, so it changes when any part does."""
    key = ":".join(f"{k}={versions[k]}" for k in sorted(versions))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


#: file names that hold pickles (torch.save, joblib, pickle itself): loading one runs code
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib"})
#: files whose first bytes are not sniffed: their own formats (a safetensors header length could
#: begin with a pickle's two magic bytes)
_OWN_SUFFIXES = frozenset({".safetensors", ".json", ".md"})


def _refuse_pickles(model_dir: Path) -> None:
    """A model directory is an artefact someone handed over: one that holds a pickle (by name,
    or by its first bytes: a pickle's protocol mark, a torch.save zip) is refused whole, since
    it is not what this tool writes and someone may expect it to be loaded."""
    for f in sorted(model_dir.iterdir()):
        if not f.is_file():
            continue
        suffix = f.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise ModelDirError(f, "a pickle file in a model directory: sysmon-blt loads only "
                                   "safetensors and JSON and refuses a directory holding pickles "
                                   "(they run code when loaded); remove it")
        if suffix in _OWN_SUFFIXES:
            continue
        with f.open("rb") as fh:
            head = fh.read(4)
        if (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head == b"PK\x03\x04":
            raise ModelDirError(f, "holds a pickle or a torch.save archive: sysmon-blt loads only "
                                   "safetensors and JSON and refuses a directory holding pickles; "
                                   "remove it")


def read_config(model_dir: Path | str) -> dict[str, Any]:
    """Parsed ``config.json`` of a model directory (validated top level)."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if not model_dir.is_dir():
        raise ModelDirError(model_dir, "model directory does not exist")
    if not path.is_file():
        raise ModelDirError(path, "missing file")
    _refuse_pickles(model_dir)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(path, f"not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ModelDirError(path, f"not a {FORMAT} config (missing or wrong 'format')")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(path, f"unsupported format_version {cfg.get('format_version')!r}")
    if not isinstance(cfg.get("models"), dict):
        raise ModelDirError(path, "'models' must be an object")
    return cfg


def has_linformer(model_dir: Path | str) -> bool:
    """Whether ``model_dir`` lists a shadow model (the Linformer and its tokenizer: the entries
    `plugin.models.linformer.ENTRY` and `plugin.models.bpe.BPE_ENTRY`).

    Only ``config.json`` is read (here, without torch); `LinformerEmbedder.from_dir` verifies
    the files.
    """
    try:
        models = read_config(model_dir)["models"]
    except ModelDirError:
        return False
    return isinstance(models.get("linformer"), dict) and isinstance(models.get("bpe"), dict)


def write_config(model_dir: Path | str, cfg: dict[str, Any]) -> None:
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, **cfg}
    cfg.setdefault("models", {})
    _atomic_write_text(Path(model_dir) / CONFIG, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_submodel(
    model_dir: Path | str, name: str, tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, Any]:
    """Write ``NAME.safetensors`` and record it (config, sha256, version) in ``config.json``.

    Other entries of ``config.json`` (other sub-models, training stats) are kept.
    Returns the sub-model's entry.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fname = f"{name}.safetensors"
    tmp = model_dir / (fname + ".tmp")
    from safetensors.torch import save_file

    save_file(tensors, str(tmp))
    os.chmod(tmp, 0o644)  # safetensors writes 0600; a shipped model must be world-readable
    os.replace(tmp, model_dir / fname)
    entry = {
        "file": fname,
        "sha256": file_sha256(model_dir / fname),
        "version": weights_version(tensors),
        "config": config,
    }
    cfg = read_config(model_dir) if (model_dir / CONFIG).exists() else {"models": {}}
    cfg["models"][name] = entry
    write_config(model_dir, cfg)
    return entry


def verified_file(model_dir: Path | str, name: str, what: str = "sub-model",
                  keys: tuple[str, ...] = ("file", "sha256", "version", "config"),
                  missing_hint: str = "") -> tuple[Path, dict[str, Any]]:
    """The file of entry ``name`` in ``config.json`` and the entry, checked before anything reads
    it: listed, complete (``keys``), a plain file name, present, and sha256 as recorded."""
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    cpath = model_dir / CONFIG
    entry = cfg["models"].get(name)
    if not isinstance(entry, dict):
        raise ModelDirError(cpath, f"no {what} {name!r} in 'models'{missing_hint}")
    for key in keys:
        if key not in entry:
            raise ModelDirError(cpath, f"{what} {name!r} lacks {key!r}")
    if Path(entry["file"]).name != entry["file"]:
        raise ModelDirError(cpath, f"{what} {name!r} file must be a plain file name")
    path = model_dir / str(entry["file"])
    if not path.is_file():
        raise ModelDirError(path, "missing file")
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise ModelDirError(path, "a link to a file outside the model directory: refused")
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise ModelDirError(
            path,
            f"sha256 {actual[:16]}... does not match {entry['sha256'][:16]}... recorded in "
            f"{CONFIG} (file modified or corrupted)",
        )
    return path, entry


def load_submodel(
    model_dir: Path | str, name: str, expected_shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verified tensors and the config entry of one sub-model.

    Checks: config.json valid and lists ``name``; the weight file exists, its sha256 matches the
    record, it parses as safetensors, and (if ``expected_shapes`` is given) it holds exactly those
    tensor names with those shapes.
    """
    wpath, entry = verified_file(model_dir, name)
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelDirError(wpath, f"not a valid safetensors file: {e}") from None
    if expected_shapes is not None:
        missing = sorted(set(expected_shapes) - set(tensors))
        extra = sorted(set(tensors) - set(expected_shapes))
        if missing or extra:
            raise ModelDirError(wpath, f"tensor names differ: missing {missing[:5]}, extra {extra[:5]}")
        for k, shape in expected_shapes.items():
            if tuple(tensors[k].shape) != tuple(shape):
                raise ModelDirError(
                    wpath, f"tensor {k!r} has shape {tuple(tensors[k].shape)}, config expects {tuple(shape)}"
                )
    return tensors, entry


def write_card(model_dir: Path | str, text: str) -> None:
    _atomic_write_text(Path(model_dir) / CARD, text)


# --- the BLT and its entropy model ------------------------------------------------------------
def save_blt(model_dir: Path | str, model, training: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``entropy.safetensors`` and ``blt.safetensors`` (+ configs) for a `BLT`.

    Returns ``{"entropy": version, "blt": version}``.
    """
    import dataclasses

    state = model.state_dict()
    ent = {k[len("entropy."):]: v for k, v in state.items() if k.startswith("entropy.")}
    rest = {k: v for k, v in state.items() if not k.startswith("entropy.")}
    cfg = model.cfg.to_dict()
    e = save_submodel(model_dir, "entropy", ent, dataclasses.asdict(model.cfg.entropy))
    cfg.pop("entropy")
    b = save_submodel(model_dir, "blt", rest, cfg)
    if training is not None:
        full = read_config(model_dir)
        full["training"] = training
        write_config(model_dir, full)
    return {"entropy": e["version"], "blt": b["version"]}


def load_blt(model_dir: Path | str):
    """`BLT` (eval mode, CPU) from a model directory, and its sub-model versions."""
    from plugin.models.blt.model import BLT, BLTConfig

    model_dir = Path(model_dir)
    cfg_all = read_config(model_dir)
    for name in ("entropy", "blt"):
        if name not in cfg_all["models"]:
            raise ModelDirError(model_dir / CONFIG, f"no sub-model {name!r} in 'models'")
    try:
        d = dict(cfg_all["models"]["blt"]["config"])
        d["entropy"] = cfg_all["models"]["entropy"]["config"]
        cfg = BLTConfig.from_dict(d)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ModelDirError(model_dir / CONFIG, f"bad BLT config: {e}") from None
    # built once, on the CPU: its shapes check the files, then it takes their weights. (Built on
    # the meta device first, the shapes cost 2 s a process: that context imports torch._dynamo.)
    model = BLT(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ent_shapes = {k[len("entropy."):]: s for k, s in shapes.items() if k.startswith("entropy.")}
    rest_shapes = {k: s for k, s in shapes.items() if not k.startswith("entropy.")}
    ent, e_entry = load_submodel(model_dir, "entropy", ent_shapes)
    rest, b_entry = load_submodel(model_dir, "blt", rest_shapes)
    model.load_state_dict({**{f"entropy.{k}": v for k, v in ent.items()}, **rest}, strict=True)
    model.eval()
    return model, {"entropy": e_entry["version"], "blt": b_entry["version"]}
