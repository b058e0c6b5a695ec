"""Reference clusters shipped in a model directory: scoring works from the first event.

`clusters.safetensors` holds the centroids and thresholds fitted on the model's own training
corpus (numbers only, never event text: the medoids of shipped clusters are empty), and
config.json records their sha256 so a tampered file is refused like the weights are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from plugin.detect.kmeans import ClusterModel, from_arrays, to_arrays

FILE = "clusters.safetensors"


class ReferenceModelError(ValueError):
    pass


def save_reference(model_dir: Path | str, model_name: str, clusters: ClusterModel, meta: dict) -> None:
    d = Path(model_dir)
    arrays = {k: np.ascontiguousarray(v) for k, v in to_arrays(clusters).items()}
    save_file(arrays, str(d / f"{model_name}.{FILE}"))
    os.chmod(d / f"{model_name}.{FILE}", 0o644)  # safetensors writes 0600; a model dir is shared
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("reference_clusters", {})[model_name] = {
        "file": f"{model_name}.{FILE}",
        "sha256": hashlib.sha256((d / f"{model_name}.{FILE}").read_bytes()).hexdigest(),
        **meta,
    }
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def load_reference(model_dir: Path | str, model_name: str) -> tuple[ClusterModel, dict] | None:
    """The shipped clusters of one sub-model, or None when the directory has none."""
    d = Path(model_dir)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReferenceModelError(f"{d / 'config.json'}: unreadable: {exc}") from exc
    meta = cfg.get("reference_clusters", {}).get(model_name)
    if meta is None:
        return None
    path = d / meta["file"]
    if not path.is_file():
        raise ReferenceModelError(f"{path}: missing (listed in config.json)")
    if hashlib.sha256(path.read_bytes()).hexdigest() != meta["sha256"]:
        raise ReferenceModelError(f"{path}: sha256 does not match config.json (tampered or corrupt)")
    return from_arrays(load_file(str(path))), meta


def fit_reference(model_dir: Path | str, texts: list[str], *, quantile: float = 0.99,
                  k: int | None = None, seed: int = 0, max_texts: int = 60000,
                  model: str = "blt") -> dict:
    """Embed the training corpus with a freshly trained model (`model`: the BLT, or the
    Linformer shadow) and ship its clusters.

    Weighted by how often each text occurs, so the reference thresholds reflect event traffic,
    not the list of distinct texts. The BLT also ships its cold-start surprisal threshold.
    """
    import random
    from collections import Counter

    from plugin.detect.kmeans import fit_clusters
    from plugin.models.embedder import BLTEmbedder

    counts = Counter(texts)
    distinct = sorted(counts)
    if len(distinct) > max_texts:
        distinct = sorted(random.Random(seed).sample(distinct, max_texts))
    if model == "blt":
        emb = BLTEmbedder.from_dir(model_dir)
    else:
        from plugin.models.linformer_embedder import LinformerEmbedder

        emb = LinformerEmbedder.from_dir(model_dir)
    vectors = emb.embed(distinct)
    weights = np.array([counts[t] for t in distinct], dtype=np.float64)
    clusters = fit_clusters(vectors, weights, k=k, quantile=quantile, seed=seed)
    meta = {"model_version": emb.version, "texts": len(distinct), "events": int(weights.sum()),
            "quantile": quantile, "k": int(clusters.centroids.shape[0]), "seed": seed}
    if model == "blt":
        from plugin.detect.surprisal import SurprisalScorer

        meta["surprisal_threshold"] = SurprisalScorer(emb, distinct, weights, quantile=quantile,
                                                      seed=seed).threshold
    save_reference(model_dir, emb.name, clusters, meta)
    return meta
