"""The README's configuration reference is the one generated from the config model: a new key
without a description, or a description changed in one place only, fails here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from plugin.config import (ENV_PREFIX, REFERENCE_END, REFERENCE_START, Config, env_var,
                           load_config, reference_markdown, write_reference)
from plugin.errors import UsageError

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = ".venv/bin/python -m plugin.config --reference --write README.md"


def readme_block(text: str) -> str:
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    assert start >= 0 and end > start, (
        f"README.md has no {REFERENCE_START} ... {REFERENCE_END} block under Configuration")
    return text[start:end + len(REFERENCE_END)] + "\n"


def test_readme_block_is_the_generated_reference():
    assert readme_block(README.read_text(encoding="utf-8")) == reference_markdown(), (
        "README.md's configuration reference is out of date with plugin/config.py: "
        f"run `{REGENERATE}` (descriptions live in plugin/config.py, _key(default, doc))")


def test_every_key_has_one_row_and_a_description():
    table = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    names = [f.name for f in dataclasses.fields(Config)]
    assert [row.split("`")[1] for row in table] == names
    assert all(f.metadata.get("doc", "").strip() for f in dataclasses.fields(Config))


def test_a_key_without_description_fails_the_generator(monkeypatch):
    @dataclasses.dataclass
    class Bad(Config):
        new_key: int = 3  # no _key(default, doc): the reference cannot be generated

    monkeypatch.setattr("plugin.config.Config", Bad)
    with pytest.raises(ValueError, match="new_key"):
        reference_markdown()


def test_named_environment_variables_are_the_ones_load_config_reads():
    """Each variable of the table sets its key (a sample value of the key's own default), and
    the YAML-only keys really are refused from the environment."""
    for f in dataclasses.fields(Config):
        env = env_var(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if env is None:
            with pytest.raises(UsageError):
                load_config(None, {}, environ={ENV_PREFIX + f.name.upper(): "x"})
        elif f.name == "kafka":
            cfg = load_config(None, {}, environ={ENV_PREFIX + "KAFKA_CLIENT_ID": "c1"})
            assert cfg.kafka == {"client.id": "c1"}
        elif default is not None:
            cfg = load_config(None, {}, environ={env: str(default)})
            assert getattr(cfg, f.name) == default
        else:
            load_config(None, {}, environ={env: "something"})  # accepted as a string


def test_write_reference_replaces_only_the_block(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\nbefore\n\n{REFERENCE_START}\nold table\n{REFERENCE_END}\n\nafter\n",
                   encoding="utf-8")
    assert write_reference(doc) is True
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert readme_block(text) == reference_markdown()
    assert write_reference(doc) is False  # already up to date
    doc.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(UsageError, match="config-reference"):
        write_reference(doc)
