"""Integrity findings of forensic imports: record-id gaps, log clearing, Sysmon's own changes,
per input, host and channel; stored once per input, shown in the import summary."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import orjson
import pytest

from conftest import DATA, EVENT_DATA, evtx_json, requires_data, winlogbeat8
from plugin.cli import main
from plugin.detect.integrity import IntegrityTracker, RecordIds, read_envelope
from plugin.sources.base import RawRecord

HOST = "WS01.corp.example"


# ---------------------------------------------------------------------------------- record ids


def test_record_ids_runs_gaps_and_duplicates():
    ids = RecordIds()
    for rid in [5, 6, 7, 10, 11, 9, 3, 20, 7, 4]:  # out of order, one duplicate
        ids.add(rid)
    # 3..7, 9..11, 20: holes after 7 (8) and after 11 (12..19)
    assert (ids.starts, ids.ends) == ([3, 9, 20], [7, 11, 20])
    assert ids.gaps() == [[7, 9], [11, 20]]
    assert (ids.gap_count(), ids.missing(), ids.duplicates) == (2, 9, 1)
    ids.add(8)  # fills a hole: two runs join
    assert ids.gaps() == [[11, 20]] and (ids.first, ids.last) == (3, 20)


def test_record_ids_gap_list_is_capped_but_counts_are_exact():
    ids = RecordIds()
    for rid in range(0, 1000, 2):  # every other id missing: 499 holes
        ids.add(rid)
    assert len(ids.gaps()) == 100 and ids.gap_count() == 499 and ids.missing() == 499


# ---------------------------------------------------------------------------------- fixtures


def sysmon_wlb(rid: int, second: int, event_id: int = 1, data: dict | None = None) -> dict:
    doc = winlogbeat8(data if data is not None else dict(
        EVENT_DATA, UtcTime=f"2024-03-05 10:11:{second:02d}.000"), code=str(event_id))
    doc["winlog"]["record_id"] = rid
    return doc


def security_1102(rid: int) -> dict:
    """A Security log clearing as Winlogbeat ships it (UserData under winlog.user_data)."""
    return {
        "@timestamp": "2024-03-05T10:12:00.000Z", "ecs": {"version": "8.0.0"},
        "event": {"code": "1102", "provider": "Microsoft-Windows-Eventlog"},
        "winlog": {"channel": "Security", "computer_name": HOST, "event_id": "1102",
                   "record_id": rid, "provider_name": "Microsoft-Windows-Eventlog",
                   "user_data": {"SubjectUserName": "mallory", "SubjectDomainName": "CORP",
                                 "SubjectUserSid": "S-1-5-21-1-2-3-1104",
                                 "xml_name": "LogFileCleared"}},
    }


def security_4624(rid: int) -> dict:
    doc = security_1102(rid)
    doc["event"]["code"] = doc["winlog"]["event_id"] = "4624"
    auditing = "Microsoft-Windows-Security-Auditing"
    doc["winlog"]["provider_name"] = doc["event"]["provider"] = auditing
    doc["winlog"].pop("user_data")
    return doc


def synthetic_records() -> list[dict]:
    """Sysmon ids 100..109 and 115..119 (a hole of five), a Sysmon config change (16) among
    them, and a Security log with a clearing (1102) next to an ordinary logon."""
    docs = [sysmon_wlb(100 + i, i) for i in range(10)]
    docs += [sysmon_wlb(115 + i, 20 + i) for i in range(4)]
    docs.append(sysmon_wlb(119, 30, event_id=16, data={
        "UtcTime": "2024-03-05 10:11:30.000", "Configuration": "C:\\tools\\evil.xml",
        "ConfigurationFileHash": "SHA256=ABCDEF"}))
    docs += [security_4624(5000), security_1102(5001)]
    return docs


def write_jsonl(path: Path, docs) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in docs) + b"\n")
    return path


def run_import(capsys, *args, as_json: bool = True) -> tuple[int, dict | str]:
    rc = main(["import", *map(str, args), "--no-embed", "-q", *(["--json"] if as_json else [])])
    out = capsys.readouterr().out
    return rc, (json.loads(out) if as_json else out)


def stored(db: Path, import_path: str | None = None) -> list[dict]:
    from plugin.store import open_store

    store = open_store(db, read_only=True)
    try:
        return store.integrity_findings(import_path)
    finally:
        store.close()


# ---------------------------------------------------------------------------------- synthetic


def test_synthetic_gap_clear_and_sysmon_change(tmp_path, capsys):
    src = write_jsonl(tmp_path / "case.jsonl", synthetic_records())
    db = tmp_path / "case.duckdb"
    rc, s = run_import(capsys, src, "--db", db)
    assert rc == 0 and s["sysmon_events"] == 15 and s["skipped_non_sysmon"] == 2
    rows = {r["channel"]: r for r in stored(db)}
    assert set(rows) == {"Microsoft-Windows-Sysmon/Operational", "Security"}

    sysmon = rows["Microsoft-Windows-Sysmon/Operational"]
    assert sysmon["import_path"] == str(src) and sysmon["computer"] == HOST
    assert sysmon["records"] == 15
    assert sysmon["record_id_gaps"] == [[109, 115]]
    assert (sysmon["gaps"], sysmon["missing_records"]) == (1, 5)
    assert (sysmon["first_record_id"], sysmon["last_record_id"]) == (100, 119)
    assert sysmon["first_ts"].isoformat().startswith("2024-03-05T10:11:00")
    assert sysmon["last_ts"].isoformat().startswith("2024-03-05T10:11:30")
    assert sysmon["sysmon_change_count"] == 1
    (change,) = sysmon["sysmon_changes"]
    assert change["event_id"] == 16 and change["what"] == "configuration changed"
    assert change["Configuration"] == "C:\\tools\\evil.xml" and change["record_id"] == 119
    assert change["ts"] == "2024-03-05T10:11:30.000Z"
    assert sysmon["log_clears"] == []

    sec = rows["Security"]
    assert sec["records"] == 2 and sec["gaps"] == 0 and sec["log_clear_count"] == 1
    (clear,) = sec["log_clears"]
    assert clear["event_id"] == 1102 and clear["user"] == "CORP\\mallory"
    assert clear["sid"] == "S-1-5-21-1-2-3-1104" and clear["record_id"] == 5001
    assert clear["ts"] == "2024-03-05T10:12:00.000Z"

    # the --json summary carries the same findings, flagged
    summary = {r["channel"]: r for r in s["integrity"]}
    assert summary["Security"]["alarming"] and summary["Security"]["log_clear_count"] == 1
    assert summary["Microsoft-Windows-Sysmon/Operational"]["alarming"]  # the hole
    assert summary["Microsoft-Windows-Sysmon/Operational"]["first_ts"] == "2024-03-05T10:11:00.000Z"
    # non-Sysmon records are read, never stored as events
    from plugin.store import open_store
    store = open_store(db, read_only=True)
    try:
        assert store.event_count() == 15
    finally:
        store.close()


def test_reimport_writes_no_second_set_and_summary_still_shows_them(tmp_path, capsys):
    src = write_jsonl(tmp_path / "case.jsonl", synthetic_records())
    db = tmp_path / "case.duckdb"
    run_import(capsys, src, "--db", db)
    first = stored(db)
    # the same bytes under another name: skipped by SHA-256, like its imports row
    copy_ = tmp_path / "again.jsonl"
    copy_.write_bytes(src.read_bytes())
    for path in (src, copy_):
        rc, s = run_import(capsys, path, "--db", db)
        assert rc == 0 and s["inputs_skipped_same_sha256"] == 1
        assert {r["channel"] for r in s["integrity"]} == {"Security",
                                                         "Microsoft-Windows-Sysmon/Operational"}
    again = stored(db)
    assert len(again) == len(first) == 2
    assert [r["recorded_at"] for r in again] == [r["recorded_at"] for r in first]


def test_rewriting_an_input_replaces_its_rows(tmp_path):
    """A resumed import writes an input's findings again (crash between integrity and
    imports rows): same path and SHA-256, one set."""
    from plugin.store import open_store

    store = open_store(tmp_path / "x.duckdb")
    try:
        row = {"computer": "H", "channel": "Security", "first_ts": None, "last_ts": None,
               "records": 3, "record_id_gaps": [[1, 3]], "gaps": 1, "missing_records": 1,
               "first_record_id": 1, "last_record_id": 4, "duplicate_record_ids": 0,
               "records_without_id": 0, "log_clears": [], "log_clear_count": 0,
               "sysmon_changes": [], "sysmon_change_count": 0}
        store.record_integrity("a.evtx", "abc", [row])
        store.record_integrity("a.evtx", "abc", [row])
        store.record_integrity("a.evtx", "other-bytes", [row])  # collected again, changed
        assert len(store.integrity_findings("a.evtx")) == 2
        assert store.integrity_findings("a.evtx")[0]["record_id_gaps"] == [[1, 3]]
        assert store.integrity_findings("b.evtx") == []
    finally:
        store.close()


def test_archive_members_are_the_custody_unit(tmp_path, capsys):
    zpath = tmp_path / "logs.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("a/one.jsonl", b"\n".join(orjson.dumps(d) for d in synthetic_records()))
        z.writestr("two.jsonl", orjson.dumps(sysmon_wlb(7, 1)))
    db = tmp_path / "z.duckdb"
    rc, _ = run_import(capsys, zpath, "--db", db)
    assert rc == 0
    paths = {r["import_path"] for r in stored(db, str(zpath))}
    assert paths == {f"{zpath}!a/one.jsonl", f"{zpath}!two.jsonl"}
    assert [r["records"] for r in stored(db, f"{zpath}!two.jsonl")] == [1]


def test_text_summary_flags_clears_and_gaps(tmp_path, capsys):
    src = write_jsonl(tmp_path / "case.jsonl", synthetic_records())
    rc, out = run_import(capsys, src, "--db", tmp_path / "t.duckdb", as_json=False)
    assert rc == 0
    section = out[out.index("integrity ("):]
    assert "2 to look at first" in section
    assert "! WS01.corp.example / Security" in section
    assert "LOG CLEARED (Security) 2024-03-05 10:12:00 by CORP\\mallory" in section
    assert "1 record-id gap, 5 missing (first: after 109, before 115)" in section
    assert "Sysmon configuration changed 2024-03-05 10:11:30 (EventID 16)" in section


def test_nothing_alarming_says_so(tmp_path, capsys):
    src = write_jsonl(tmp_path / "ok.jsonl", [sysmon_wlb(1 + i, i) for i in range(5)])
    rc, out = run_import(capsys, src, "--db", tmp_path / "ok.duckdb", as_json=False)
    assert "nothing alarming" in out and "5 records, no record-id gap" in out
    assert "\n  ! " not in out


# ---------------------------------------------------------------------------------- shapes


def test_envelopes_of_every_shape():
    from conftest import event_xml, nxlog, sentinel, winlogbeat6

    for doc in (evtx_json(), winlogbeat8(), winlogbeat6(), sentinel(), nxlog()):
        env = read_envelope(orjson.dumps(doc))
        assert (env.computer, env.record_id, env.event_id) == (HOST, 777, 1), doc
        assert env.channel == "Microsoft-Windows-Sysmon/Operational"
    env = read_envelope(event_xml())
    assert (env.computer, env.record_id, env.event_id) == (HOST, 777, 1)
    assert env.ts.isoformat() == "2024-03-05T10:11:12.346123+00:00"
    assert read_envelope(orjson.dumps(nxlog())).ts is None  # NXLog writes local times
    assert read_envelope(b"[1, 2]") is None


def test_evtx_system_104_with_qualifiers_and_a_dead_letter_keeps_its_place(schemas):
    """EventID as {"#text", "#attributes"}; a record the normalizer rejects still counts."""
    from plugin.normalize.shapes import BadRecord
    from plugin.pipeline.importer import TrackingNormalizer

    tracker = IntegrityTracker()
    normalize = TrackingNormalizer(schemas, tracker)
    ev = evtx_json()
    ev["Event"]["System"].update({
        "Provider": {"#attributes": {"Name": "Microsoft-Windows-Eventlog"}},
        "EventID": {"#attributes": {"Qualifiers": 0}, "#text": 104}, "Channel": "System",
        "EventRecordID": 41})
    ev["Event"].pop("EventData")
    ev["Event"]["UserData"] = {"LogFileCleared": {"SubjectUserName": "bob",
                                                  "SubjectDomainName": "CORP",
                                                  "Channel": "Application"}}
    tracker.observe_raw(RawRecord("s.evtx", 0, orjson.dumps(ev).decode()))
    # a Sysmon record with a broken EventID: a dead letter, but its record id was in the log
    broken = evtx_json(EventID="not-a-number", Channel="System", EventRecordID=43)
    with pytest.raises(BadRecord):
        normalize(RawRecord("s.evtx", 1, orjson.dumps(broken).decode()))
    with pytest.raises(BadRecord):
        normalize(RawRecord("s.evtx", 2, b"not json at all"))  # no envelope: not counted
    (f,) = tracker.take("s.evtx")
    assert f.records == 2 and f.record_id_gaps == [[41, 43]]
    assert f.log_clear_count == 1 and f.log_clears[0]["user"] == "CORP\\bob"
    assert f.log_clears[0]["log"] == "Application"  # 104 names the log it cleared
    assert tracker.take("s.evtx") == []  # handed over once


def test_channel_spelling_does_not_split_a_log():
    tracker = IntegrityTracker()
    for i, ch in enumerate(["Security", "security", "SECURITY"]):
        doc = security_4624(10 + i)
        doc["winlog"]["channel"] = ch
        tracker.observe_raw(RawRecord("x.json", i, orjson.dumps(doc)))
    (f,) = tracker.take("x.json")
    assert f.channel == "Security" and f.records == 3 and f.gaps == 0


def test_old_database_has_no_findings(tmp_path):
    from plugin.store import open_store

    store = open_store(tmp_path / "old.duckdb")
    store.con.execute("DROP TABLE integrity")  # as a file from before migration 7, read-only
    try:
        assert store.integrity_findings() == []
    finally:
        store.close()


# ---------------------------------------------------------------------------------- real EVTX


@requires_data
def test_real_evtx_security_clear_and_sysmon_config_change(tmp_path, capsys):
    cleared = DATA / "evtx-attack-samples" / "Defense Evasion" / "DE_1102_security_log_cleared.evtx"
    system = DATA / "evtx-attack-samples" / "Defense Evasion" / "DE_104_system_log_cleared.evtx"
    sysmon = DATA / "evtx-rs-samples" / "sysmon.evtx"
    db = tmp_path / "real.duckdb"
    rc, s = run_import(capsys, cleared, system, sysmon, "--db", db)
    assert rc == 0
    (sec,) = stored(db, str(cleared))
    assert (sec["computer"], sec["channel"]) == ("PC01.example.corp", "Security")
    assert sec["records"] == 112
    assert (sec["first_record_id"], sec["gaps"]) == (452811, 0)
    (clear,) = sec["log_clears"]
    assert clear["event_id"] == 1102 and clear["user"] == "EXAMPLE\\user01"
    assert clear["ts"] == "2019-03-19T23:35:07.524Z"
    (sys_row,) = stored(db, str(system))
    (sys_clear,) = sys_row["log_clears"]
    assert sys_clear["event_id"] == 104 and sys_clear["log"] == "System"
    (sm,) = stored(db, str(sysmon))
    # INVENTORY: 358 Sysmon records, one config change (16); the damaged chunks are dead letters
    assert sm["records"] == 358 and sm["gaps"] == 0 and sm["sysmon_change_count"] == 1
    assert (sm["first_record_id"], sm["last_record_id"]) == (1742, 2099)
    assert sm["sysmon_changes"][0]["Configuration"].endswith("sysmon.workstations.cfg")
    assert sum(1 for r in s["integrity"] if r["alarming"]) == 2
