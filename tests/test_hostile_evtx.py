"""Damaged real EVTX files (issue 17, item 1): mutants of real Sysmon logs from ../shared/data
(truncated, bit-flipped, broken chunk headers, zero-filled regions, a damaged file header) are
imported without a crash, and every Sysmon record pyevtx-rs reads from the mutant on its own is
stored or a dead letter. `benchmarks/reliability.py` runs many more; this is its quick guard."""

from __future__ import annotations

import importlib.util
import random
import sys

import duckdb
import pytest

from conftest import DATA, ROOT, requires_data
from plugin.cli import main


def _reliability():
    spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks" / "reliability.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reliability", mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


KINDS = ["truncate", "bitflip", "chunk_header", "zero_fill", "file_header"]


@requires_data
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_real_log_loses_no_readable_record(tmp_path, capsys, kind):
    rel = _reliability()
    src = rel.sysmon_evtx_files(DATA, 2)[KINDS.index(kind) % 2]
    rng = random.Random(f"{kind}:17")
    path = tmp_path / f"{kind}.evtx"
    path.write_bytes(rel.mutate(src.read_bytes(), kind, rng))
    oracle = set(rel.evtx_oracle(path)["sysmon"])
    db = tmp_path / "m.duckdb"
    assert main(["import", str(path), "--db", str(db), "--no-embed", "-q", "--json"]) == 0
    capsys.readouterr()
    con = duckdb.connect(str(db), read_only=True)
    stored = {r[0] for r in con.execute("SELECT record_id FROM events").fetchall()}
    payloads = [r[0] for r in con.execute("SELECT payload FROM dead_letters").fetchall() if r[0]]
    reasons = [r[0] for r in con.execute("SELECT reason FROM dead_letters").fetchall()]
    con.close()
    dead = {int(m.group(1)) for p in payloads for m in [rel.RID_IN_PAYLOAD.search(p)] if m}
    assert not oracle - stored - dead, f"{len(oracle - stored - dead)} readable records lost"
    assert all(reasons), "every dead letter says why"
