"""Schemas as data: every Sysmon event ID has one, and a bad file is a clear start-up error."""

from __future__ import annotations

import shutil

import pytest

from plugin.errors import SchemaError
from plugin.normalize.schema import EXPECTED_IDS, load_schemas
from plugin.resources import schemas_dir


def test_shipped_schemas_cover_every_event_id(schemas):
    assert set(schemas.events) == set(EXPECTED_IDS)
    for eid, s in schemas.events.items():
        assert s.text_fields, eid
        assert "rulename" not in {f.lower() for f in s.text_fields}


@pytest.fixture
def copy(tmp_path):
    dst = tmp_path / "sysmon"
    shutil.copytree(schemas_dir() / "sysmon", dst)
    return dst


@pytest.mark.parametrize("fname,content,key", [
    ("1.yaml", "event_id: 1\nname: x\ntext_fields: Image\n", "text_fields"),
    ("1.yaml", "event_id: 2\nname: x\ntext_fields: [Image]\n", "event_id"),
    ("1.yaml", "event_id: 1\nname: x\ntext_fields: [Image]\nfield_masks: {Image: [nope]}\n", "field_masks.Image"),
    ("1.yaml", "event_id: 1\nname: x\ntext_fields: [Image]\ncolour: red\n", "colour"),
    ("1.yaml", "event_id: 1\nname: x\ntext_fields: [Image\n", "<file>"),
    ("_common.yaml", "masks:\n  - {name: a, regex: '(', token: x}\n", "masks[0].regex"),
])
def test_bad_schema_names_file_and_key(copy, fname, content, key):
    (copy / fname).write_text(content)
    with pytest.raises(SchemaError) as err:
        load_schemas(copy)
    assert fname in str(err.value) and repr(key) in str(err.value)


def test_missing_event_schema_is_an_error(copy):
    (copy / "7.yaml").unlink()
    with pytest.raises(SchemaError, match=r"\[7\]"):
        load_schemas(copy)


def test_config_points_at_a_users_own_copy(copy, tmp_path, capsys):
    import json

    from plugin.cli import main

    text = (copy / "1.yaml").read_text().replace("- CommandLine\n", "")
    (copy / "1.yaml").write_text(text)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"schemas_dir: {copy}\n")
    src = tmp_path / "e.jsonl"
    from conftest import winlogbeat8
    src.write_text(json.dumps(winlogbeat8()) + "\n")
    db = tmp_path / "d.duckdb"
    assert main(["import", str(src), "--db", str(db), "--config", str(cfg), "-q", "--json"]) == 0
    import duckdb
    con = duckdb.connect(str(db), read_only=True)
    t = con.execute("SELECT normalized FROM events").fetchone()[0]
    con.close()
    assert " commandline=" not in t and "parentcommandline=" in t and "image=" in t
