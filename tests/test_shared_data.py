"""Real public data from ../shared/data, checked against the exact counts of its INVENTORY.md."""

from __future__ import annotations

import re


from conftest import DATA, requires_data
from plugin.normalize.schema import load_schemas
from plugin.pipeline.importer import Importer
from plugin.store import open_store

pytestmark = requires_data


def inventory() -> dict[str, tuple[int, int, int]]:
    """path -> (records, sysmon records, parse errors)."""
    out = {}
    for line in (DATA / "INVENTORY.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[1].isdigit() and cells[2].isdigit():
            out[cells[0]] = (int(cells[2]), int(cells[3]), int(cells[5]))
    return out


def do_import(tmp_path, *paths, db="t.duckdb"):
    store = open_store(tmp_path / db)
    try:
        summary = Importer(store, load_schemas(), progress=False).run([str(p) for p in paths])
        imports = store.con.execute(
            "SELECT path, records, sysmon_events, dead_letters, status FROM imports").fetchall()
        return summary, imports, store
    except Exception:
        store.close()
        raise


def test_sysmon_evtx_exact_counts_and_damaged_chunks(tmp_path):
    s, _, store = do_import(tmp_path, DATA / "evtx-rs-samples" / "sysmon.evtx")
    try:
        assert (s.records, s.sysmon_events, s.new_events, s.dead_letters) == (358, 358, 358, 8)
        reasons = [r[0] for r in store.con.execute("SELECT reason FROM dead_letters").fetchall()]
        assert all(r.startswith("damaged EVTX chunk") for r in reasons)
        assert {int(re.search(r"chunk (\d+)", r).group(1)) for r in reasons} == set(range(9, 17))
    finally:
        store.close()


def test_every_evtx_file_matches_inventory(tmp_path):
    inv = inventory()
    s, imports, store = do_import(tmp_path, DATA / "evtx-rs-samples", DATA / "evtx-attack-samples")
    store.close()
    checked = 0
    for path, records, sysmon, dead, status in imports:
        rel = path.split("data/", 1)[1]
        if status != "complete" or rel not in inv:
            continue
        exp = inv[rel]
        assert (records, sysmon, dead) == exp, rel
        checked += 1
    assert checked >= 140


def test_attack_samples_store_1799_and_reimport_is_idempotent(tmp_path):
    folder = DATA / "evtx-attack-samples"
    s1, _, store = do_import(tmp_path, folder)
    store.close()
    assert s1.new_events == 1799
    s2, _, store = do_import(tmp_path, folder)
    try:
        assert s2.new_events == 0 and s2.duplicates == s1.sysmon_events
        assert store.con.execute("SELECT count(*) FROM events").fetchone()[0] == 1799
        triples = store.con.execute(
            "SELECT count(DISTINCT (lower(computer), channel, record_id)) FROM events").fetchone()[0]
        assert triples == 1786  # record IDs alone collide across captures; the key does not
        texts = [r[0] for r in store.con.execute("SELECT normalized FROM events").fetchall()]
    finally:
        store.close()
    assert_clean_texts(texts)


GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
HEX32 = re.compile(r"[0-9a-fA-F]{32,}")


def assert_clean_texts(texts):
    for t in texts:
        assert not GUID.search(t), t
        assert not DATETIME.search(t), t
        assert not HEX32.search(t), t


def test_otrf_archives_counts_shapes_and_clean_text(tmp_path):
    inv = inventory()
    picks = [
        "otrf/atomic/windows/credential_access/host/cmd_lsass_memory_dumpert_syscalls.zip",
        "otrf/atomic/windows/credential_access/host/empire_mimikatz_opth.tar.gz",
        "otrf/compound/Log4Shell/sysmon_log4shell_cve2021_44228_java_serialized_object.zip",
    ]
    picks = [p for p in picks if (DATA / p).is_file()]
    assert picks
    s, imports, store = do_import(tmp_path, *[DATA / p for p in picks])
    try:
        top = {r[0].split("data/", 1)[1]: r for r in imports if "!" not in r[0]}
        for p in picks:
            records, sysmon, _ = inv[p]
            assert top[p][1] == records and top[p][2] == sysmon, p
        assert s.dead_letters == 0
        shapes = {r[0] for r in store.con.execute("SELECT DISTINCT shape FROM events").fetchall()}
        texts = [r[0] for r in store.con.execute("SELECT normalized FROM events").fetchall()]
        fields_rule = store.con.execute(
            "SELECT count(*) FROM events WHERE json_extract_string(fields, '$.RuleName') IS NOT NULL"
        ).fetchone()[0]
        no_ts = store.con.execute("SELECT count(*) FROM events WHERE ts IS NULL").fetchone()[0]
    finally:
        store.close()
    assert shapes >= {"winlogbeat6", "sentinel"} and shapes & {"nxlog", "flat"}
    assert fields_rule > 0 and no_ts == 0
    assert_clean_texts(texts)
