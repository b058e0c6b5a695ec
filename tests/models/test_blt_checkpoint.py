"""Model directory: bit-exact round trip, and clear errors for bad or tampered directories."""

import json

import pytest
import torch
from safetensors.torch import save_file

from plugin.models.blt.model import BLT
from plugin.models.checkpoint import (
    ModelDirError,
    load_blt,
    read_config,
    save_blt,
    weights_version,
)
from tests.models.blt_helpers import micro_config
from tests.models.blt_helpers import micro_model as build_micro_model


@pytest.fixture(name="micro_model")
def _micro_model():
    return build_micro_model()


@pytest.fixture
def model_dir(tmp_path, micro_model):
    save_blt(tmp_path, micro_model, training={"note": "test"})
    return tmp_path


def test_round_trip_bit_exact(model_dir, micro_model):
    loaded, versions = load_blt(model_dir)
    a, b = micro_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert loaded.cfg == micro_model.cfg
    cfg = read_config(model_dir)
    assert versions["blt"] == cfg["models"]["blt"]["version"]
    assert len(versions["blt"]) == 16 and versions["entropy"] != versions["blt"]
    assert cfg["training"] == {"note": "test"}


def test_version_is_hash_of_weights_and_deterministic(tmp_path, micro_model):
    v1 = save_blt(tmp_path / "a", micro_model)
    v2 = save_blt(tmp_path / "b", micro_model)
    assert v1 == v2
    sd = dict(micro_model.state_dict())
    assert weights_version(sd) != weights_version({**sd, "latent.in_proj.bias": sd["latent.in_proj.bias"] + 1})


@pytest.mark.parametrize("victim", ["config.json", "blt.safetensors", "entropy.safetensors"])
def test_missing_file(model_dir, victim):
    (model_dir / victim).unlink()
    with pytest.raises(ModelDirError, match=victim.replace(".", r"\.")):
        load_blt(model_dir)


def test_missing_dir(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        load_blt(tmp_path / "nope")


def test_bad_json(model_dir):
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match=r"config\.json.*not valid JSON"):
        load_blt(model_dir)


def test_tampered_weights(model_dir):
    path = model_dir / "blt.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=r"blt\.safetensors.*sha256"):
        load_blt(model_dir)


def test_wrong_shapes(model_dir):
    # a structurally valid file, re-recorded in config.json, but with a mis-shaped tensor
    other = BLT(micro_config())
    ent = {k[8:]: v for k, v in other.state_dict().items() if k.startswith("entropy.")}
    ent["head.weight"] = torch.zeros(3, 3)
    path = model_dir / "entropy.safetensors"
    save_file(ent, str(path))
    cfg = json.loads((model_dir / "config.json").read_text())
    import hashlib

    cfg["models"]["entropy"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match=r"entropy\.safetensors.*head\.weight.*shape"):
        load_blt(model_dir)


def test_bad_config_values(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["models"]["blt"]["config"]["patch"]["mode"] = "sideways"
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="bad BLT config"):
        load_blt(model_dir)


def test_error_is_value_error():
    assert issubclass(ModelDirError, ValueError)
