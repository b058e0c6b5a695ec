"""`import` with a model: every event gets a BLT vector, each distinct text is embedded once."""

from __future__ import annotations

import json

import duckdb
import pytest

from plugin.cli import main


@pytest.fixture(scope="module")
def model_dir(micro_model_dir):
    return micro_model_dir


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    from plugin import simulate

    p = tmp_path_factory.mktemp("sim") / "sim.jsonl"
    simulate.write_jsonl(str(p), 600, seed=3, shape="mixed")
    return p


def imp(capsys, *args):
    assert main(["import", *map(str, args), "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_event_has_a_vector_and_texts_are_embedded_once(tmp_path, capsys, model_dir, events_file):
    db = tmp_path / "e.duckdb"
    s = imp(capsys, events_file, "--db", db, "--model", model_dir)
    assert s["embedded"] and s["new_events"] == 600
    stage = s["stages"][0]
    con = duckdb.connect(str(db), read_only=True)
    try:
        n_events, n_texts = con.execute(
            "SELECT count(*), count(DISTINCT text_hash) FROM events").fetchone()
        per_event = con.execute(
            "SELECT count(*), count(DISTINCT event_key), count(DISTINCT vector) FROM event_vectors "
            "WHERE model = 'blt'").fetchone()
        stored = con.execute("SELECT count(*) FROM text_vectors WHERE model = 'blt'").fetchone()[0]
        vtype = dict((r[0], r[1]) for r in con.execute("DESCRIBE event_vectors").fetchall())["vector"]
    finally:
        con.close()
    assert per_event[0] == per_event[1] == n_events  # one vector row per event
    assert per_event[2] > 1  # not constant across events
    assert stored == n_texts == stage["texts_embedded"]  # vectors stored once per distinct text
    assert vtype == "FLOAT[32]"
    # the same events again (other bytes, same identity): nothing new to embed
    other = tmp_path / "again.jsonl"
    other.write_text(events_file.read_text() + "\n")
    s2 = imp(capsys, other, "--db", db, "--model", model_dir)
    assert s2["new_events"] == 0 and s2["stages"][0]["texts_embedded"] == 0


def test_bad_model_dir_is_a_usage_error(tmp_path, capsys, events_file, model_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert main(["import", str(events_file), "--db", str(tmp_path / "x.duckdb"), "--model", str(bad), "-q"]) == 2
    assert "--model" in capsys.readouterr().err
