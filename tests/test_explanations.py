"""Explanations name what is anomalous: with the shipped (trained) model, every flagged injected
anomaly of the simulator has a surprising span inside the field the simulator tampered with,
and its process lineage when its parent's creation was imported too."""

from __future__ import annotations

import json
import re

import duckdb
import orjson
import pytest

from plugin.cli import main
from plugin.resources import default_model_dir

# simulator scenario -> the canonical-text key whose value holds the injected span. Only the
# scenarios whose anomaly is a strange string: a rare beacon's IP or lsass access's 0x1010 are
# ordinary-looking values (the anomaly is the combination), so their surprising spans need not
# point at them.
FIELD_OF = {
    "encoded_powershell": "commandline", "comsvcs_minidump": "commandline",
    "certutil_download": "commandline", "winword_cmd": "commandline",
    "runkey_persistence": "targetobject",
}


def value_range(text: str, key: str) -> tuple[int, int]:
    """Byte range of `key`'s value in a canonical text (up to the next ` name=`)."""
    data = text.encode()
    m = re.search(rb"(?:^| )" + key.encode() + rb"=", data)
    assert m, (key, text)
    nxt = re.compile(rb" [a-z0-9_.]+=").search(data, m.end())
    return m.end(), nxt.start() if nxt else len(data)


@pytest.mark.skipif(not (default_model_dir() / "config.json").is_file(), reason="no shipped model")
def test_outlier_explanations_name_the_injected_span(tmp_path):
    from plugin import simulate

    src = tmp_path / "sim.jsonl"
    simulate.write_jsonl(str(src), 1500, seed=5, anomaly_rate=0.05, shape="winlogbeat8")
    db = tmp_path / "x.duckdb"
    # the corpus's threshold: this test reads explanations of the injected anomalies, which the
    # case calibration of a 1,500-event run mostly leaves below its bar (see the README)
    cfg = tmp_path / "shipped.yaml"
    cfg.write_text("cold_start: shipped\n")
    assert main(["import", str(src), "--db", str(db), "-q", "--config", str(cfg)]) == 0
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT e.normalized, e.raw, a.explanation FROM events e JOIN assignments a "
        "USING (event_key) WHERE a.model = 'blt' AND a.is_outlier").fetchall()
    outliers = con.execute("SELECT count(*) FROM assignments WHERE model = 'blt' AND is_outlier").fetchone()[0]
    con.close()
    checked = with_lineage = 0
    for text, raw, expl in rows:
        e = json.loads(expl)
        assert e["surprising_spans"], text  # every outlier: a span of its own text
        for sp in e["surprising_spans"]:
            assert text.encode()[sp["start"]:sp["end"]].decode("utf-8", "replace") == sp["text"]
        label = orjson.loads(raw).get("sysmon_blt_sim") or {}
        if label.get("scenario") not in FIELD_OF:
            continue
        lo, hi = value_range(text, FIELD_OF[label["scenario"]])
        assert any(sp["start"] < hi and lo < sp["end"] for sp in e["surprising_spans"]), (
            label["scenario"], text, e["surprising_spans"])
        checked += 1
        chain = e["process_lineage"]
        if chain and chain[0]["image"]:  # the parent's creation was imported too
            with_lineage += 1
    assert len(rows) == outliers and checked >= 10 and with_lineage >= 1


def test_reasons_say_where_a_binary_was_never_seen():
    """After a fit a never-seen binary is new to the baseline; before one, new to the case: the
    analyst must not read "no baseline host ran" where nobody vouched for a baseline."""
    from plugin.detect.explain import reasons

    ctx = {"content_score": 0.4, "novel_images": ["c:\\x.exe"], "novelty_weight": 1.0,
           "lineage_context": 0.0, "lineage_weight": 0.5}
    fitted = reasons({"context": ctx})
    cold = reasons({"context": {**ctx, "novel_in": "case"}})
    assert fitted[0] == "it names a binary no baseline host ran: c:\\x.exe (+1.00)"
    assert cold[0] == "it runs a binary no earlier event of this case named (no fit yet): c:\\x.exe (+1.00)"
