"""`train --shadow-only`: add the Linformer shadow (tokenizer, weights, reference clusters, model
card section) to a model directory that already holds its BLT, without touching the BLT."""

from __future__ import annotations

import json

import torch

from plugin.cli import SHADOW_CARD_MARK, main


def test_train_shadow_only_adds_the_shadow_and_keeps_the_blt(tmp_path, capsys):
    from models.blt_helpers import micro_config
    from plugin import simulate
    from plugin.models.blt.model import BLT
    from plugin.models.checkpoint import save_blt, write_card
    from plugin.models.linformer_embedder import LinformerEmbedder, has_linformer

    d = tmp_path / "model"
    torch.manual_seed(0)
    blt_versions = save_blt(d, BLT(micro_config()).eval())
    write_card(d, "# model card\n")
    src = tmp_path / "corpus.jsonl"
    simulate.write_jsonl(str(src), 400, seed=3, anomaly_rate=0.0)
    argv = ["train", str(src), "--out", str(d), "--shadow-only", "--shadow-steps", "3", "-q"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert has_linformer(d) and out["shadow"]["steps"] == 3
    assert out["shadow_reference_clusters"]["model_version"] == LinformerEmbedder.from_dir(d).version
    cfg = json.loads((d / "config.json").read_text())
    assert {cfg["models"]["blt"]["version"], cfg["models"]["entropy"]["version"]} == set(blt_versions.values())
    assert "linformer" in cfg["reference_clusters"] and "blt" not in cfg.get("reference_clusters", {})
    # retraining replaces the card's shadow section instead of appending a second one
    assert main(argv) == 0
    card = (d / "MODEL_CARD.md").read_text()
    assert card.startswith("# model card") and card.count(SHADOW_CARD_MARK) == 1
    assert card.count("## Shadow model") == 1


def test_train_shadow_only_needs_a_blt(tmp_path, capsys):
    from plugin import simulate

    src = tmp_path / "corpus.jsonl"
    simulate.write_jsonl(str(src), 50, seed=3)
    (tmp_path / "empty").mkdir()
    assert main(["train", str(src), "--out", str(tmp_path / "empty"), "--shadow-only", "-q"]) == 2
    assert "shadow-only" in capsys.readouterr().err
