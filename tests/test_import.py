"""`sysmon-blt import` end to end: summaries, idempotence, dead letters, exit codes."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import duckdb
import orjson
import pytest

from conftest import evtx_json, nxlog, winlogbeat8
from plugin.cli import main


def run_import(capsys, *args) -> tuple[int, dict]:
    rc = main(["import", *map(str, args), "--json", "-q"])
    out = capsys.readouterr().out
    return rc, (json.loads(out) if out.strip() else {})


def variant(i: int) -> dict:
    doc = winlogbeat8()
    doc["winlog"]["record_id"] = 1000 + i
    doc["winlog"]["event_data"] = dict(doc["winlog"]["event_data"],
                                       UtcTime=f"2024-03-05 10:11:{i % 60:02d}.{i:03d}")
    return doc


def write_jsonl(path: Path, docs) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in docs) + b"\n")
    return path


def db_rows(db: Path, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_summary_keys_and_idempotent_reimport(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [variant(i) for i in range(50)])
    db = tmp_path / "x.duckdb"
    rc, s = run_import(capsys, src, "--db", db)
    assert rc == 0
    for key in ("records", "sysmon_events", "new_events", "duplicates", "skipped_non_sysmon",
                "dead_letters", "outliers", "seconds"):
        assert key in s
    assert (s["records"], s["sysmon_events"], s["new_events"], s["duplicates"]) == (50, 50, 50, 0)
    # same file again: skipped by SHA-256, its events counted as duplicates
    rc, s2 = run_import(capsys, src, "--db", db)
    assert rc == 0 and s2["new_events"] == 0 and s2["duplicates"] == 50
    # same events in a different file (different bytes, same identity): stored once
    src2 = write_jsonl(tmp_path / "b.jsonl", [variant(i) for i in range(50)][::-1])
    rc, s3 = run_import(capsys, src2, "--db", db)
    assert s3["new_events"] == 0 and s3["duplicates"] == 50
    assert db_rows(db, "SELECT count(*) FROM events")[0][0] == 50
    statuses = db_rows(db, "SELECT status, count(*) FROM imports GROUP BY 1 ORDER BY 1")
    assert ("complete", 2) in statuses and ("skipped_same_sha256", 1) in statuses


def test_mixed_valid_and_garbage_lines(tmp_path, capsys):
    good = [orjson.dumps(variant(i)) for i in range(20)]
    bad = [b"{not json", b"[1,2]", b'"str"', b"\x00\xff\xfe garbage", b'{"Event": {"EventData": {}}}',
           b'{"foo": "bar"}']
    lines = []
    for i, g in enumerate(good):
        lines.append(g)
        if i < len(bad):
            lines.append(bad[i])
    src = tmp_path / "mixed.ndjson"
    src.write_bytes(b"\n".join(lines))
    db = tmp_path / "m.duckdb"
    rc, s = run_import(capsys, src, "--db", db)
    assert rc == 0
    assert s["new_events"] == 20 and s["dead_letters"] == len(bad)
    rows = db_rows(db, "SELECT position, reason, payload FROM dead_letters ORDER BY position")
    assert len(rows) == len(bad)
    assert all(r[1] for r in rows)
    assert rows[0][2] == "{not json" and rows[0][0] == 1


def test_json_array_file_and_non_sysmon_counted(tmp_path, capsys):
    sec = evtx_json()
    sec["Event"]["System"]["Provider"] = {"#attributes": {"Name": "Microsoft-Windows-Security-Auditing"}}
    sec["Event"]["System"]["Channel"] = "Security"
    src = tmp_path / "export.json"
    src.write_text(json.dumps([evtx_json(), nxlog(), sec], indent=2))
    rc, s = run_import(capsys, src, "--db", tmp_path / "a.duckdb")
    # evtx_json() and nxlog() are the same event (same computer, channel, record, UtcTime)
    assert (s["records"], s["sysmon_events"], s["new_events"], s["duplicates"], s["skipped_non_sysmon"]) == (3, 2, 1, 1, 1)


def _archive_payload():
    return b"\n".join(orjson.dumps(variant(i)) for i in range(30)) + b"\n"


def test_zip_and_tar_archives_stream_members_and_skip_macos_junk(tmp_path, capsys):
    payload = _archive_payload()
    zpath = tmp_path / "c.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("capture/events.json", payload)
        z.writestr("__MACOSX/capture/._events.json", b"\x00\x05\x16\x07junk")
        z.writestr("capture/._events.json", b"\x00\x05\x16\x07junk")
        z.writestr("capture/readme.txt", b"hello")
    tpath = tmp_path / "d.tar.gz"
    with tarfile.open(tpath, "w:gz") as t:
        info = tarfile.TarInfo("x/events.jsonl")
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    db = tmp_path / "z.duckdb"
    rc, s = run_import(capsys, zpath, tpath, "--db", db)
    assert rc == 0 and s["dead_letters"] == 0
    assert s["sysmon_events"] == 60 and s["new_events"] == 30 and s["duplicates"] == 30
    paths = {r[0] for r in db_rows(db, "SELECT path FROM imports")}
    assert f"{zpath}!capture/events.json" in paths and f"{tpath}!x/events.jsonl" in paths
    sources = {r[0] for r in db_rows(db, "SELECT DISTINCT source FROM events")}
    assert sources == {f"{zpath}!capture/events.json"}


def test_bad_inputs_become_dead_letters_and_run_goes_on(tmp_path, capsys):
    payload = _archive_payload()
    zbytes = io.BytesIO()
    with zipfile.ZipFile(zbytes, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("events.json", payload * 50)
    (tmp_path / "trunc.zip").write_bytes(zbytes.getvalue()[: len(zbytes.getvalue()) // 2])
    tbytes = io.BytesIO()
    with tarfile.open(fileobj=tbytes, mode="w:gz") as t:
        info = tarfile.TarInfo("events.json")
        big = payload * 200
        info.size = len(big)
        t.addfile(info, io.BytesIO(big))
    (tmp_path / "trunc.tar.gz").write_bytes(tbytes.getvalue()[: len(tbytes.getvalue()) // 2])
    (tmp_path / "random.evtx").write_bytes(os.urandom(5000))
    write_jsonl(tmp_path / "good.jsonl", [variant(i) for i in range(5)])
    db = tmp_path / "b.duckdb"
    rc, s = run_import(capsys, tmp_path, "--db", db)
    assert rc == 0
    assert s["new_events"] >= 5
    reasons = [r[0] for r in db_rows(db, "SELECT source || ': ' || reason FROM dead_letters")]
    assert any("trunc.zip" in r for r in reasons), reasons
    assert any("trunc.tar.gz" in r for r in reasons), reasons
    assert any("random.evtx" in r and "EVTX" in r for r in reasons), reasons


def test_since_until_filter(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [variant(i) for i in range(60)])
    rc, s = run_import(capsys, src, "--db", tmp_path / "t.duckdb",
                       "--since", "2024-03-05T10:11:10Z", "--until", "2024-03-05 10:11:20")
    assert rc == 0 and s["new_events"] == 10 and s["filtered_by_time"] == 50


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["import", str(tmp_path / "missing.evtx"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["import", str(tmp_path), "--since", "yesterday"])
    assert e.value.code == 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_sise: 10\n")
    assert main(["import", str(tmp_path), "--config", str(cfg), "-q"]) == 2
    assert "batch_sise" in capsys.readouterr().err


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "sysmon-blt" in capsys.readouterr().out


def test_default_db_in_working_directory(tmp_path, capsys, monkeypatch):
    src = write_jsonl(tmp_path / "a.jsonl", [variant(1)])
    monkeypatch.chdir(tmp_path)
    rc, s = run_import(capsys, src)
    assert rc == 0 and (tmp_path / "sysmon-blt.duckdb").is_file()


def test_older_database_is_migrated_forward(tmp_path):
    from plugin.store import open_store
    from plugin.store.duckdb import load_migrations

    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    first = load_migrations()[0]
    con.execute(first[1])
    con.execute("INSERT INTO schema_version VALUES (?, now(), 'old')", [first[0]])
    con.close()
    store = open_store(db)
    assert store.schema_version() == load_migrations()[-1][0]
    store.close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE schema_version SET version = 999")
    con.close()
    from plugin.errors import UsageError
    with pytest.raises(UsageError, match="newer"):
        open_store(db)


def test_db_memory_limit_too_small_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from plugin import simulate
    from plugin.cli import main

    src = tmp_path / "s.jsonl"
    simulate.write_jsonl(str(src), 20000, seed=0)
    monkeypatch.setenv("SYSMON_BLT_DB_MEMORY_LIMIT", "1MB")
    assert main(["import", str(src), "--db", str(tmp_path / "a.duckdb"), "--no-embed", "-q"]) == 1
    assert "SYSMON_BLT_DB_MEMORY_LIMIT" in capsys.readouterr().err
    monkeypatch.setenv("SYSMON_BLT_DB_MEMORY_LIMIT", "lots")
    assert main(["import", str(src), "--db", str(tmp_path / "b.duckdb"), "--no-embed", "-q"]) == 2
    assert "db_memory_limit 'lots'" in capsys.readouterr().err


def test_a_line_over_the_bound_is_a_dead_letter_and_its_neighbours_stay(monkeypatch):
    """A JSON line longer than the bound is never held whole: one dead letter at its position,
    read on past its newline, lines around it kept with their positions (also when the long
    line spans many read chunks, and when it is the last line)."""
    from plugin.sources import jsonl
    from plugin.sources.base import RawRecord, SourceError

    monkeypatch.setattr(jsonl, "CHUNK", 64)
    lines = [b'{"a": 1}', b'{"b": "' + b"x" * 1000 + b'"}', b'{"c": 3}', b"y" * 150,
             b'{"d": 4}', b"z" * 5000]
    blob = b"\n".join(lines)
    stream = io.BytesIO(blob)
    got = list(jsonl._read_lines("f.jsonl", stream.read(jsonl.CHUNK), stream, max_line=100))
    kept = [(r.position, r.data) for r in got if isinstance(r, RawRecord)]
    dead = [(r.position, r.reason) for r in got if isinstance(r, SourceError)]
    assert kept == [(0, lines[0]), (2, lines[2]), (4, lines[4])]
    assert [p for p, _ in dead] == [1, 3, 5]
    assert all("longer than 100 bytes" in reason for _, reason in dead)


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB filesystem to fill (a tmpfs: mounting one needs root, as CI runs)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_fails_clearly_and_a_rerun_with_room_finishes_the_job(tmp_path, small_fs,
                                                                        capsys):
    """The database's disk fills mid-import: exit 1 with what to do, no batch half-written;
    once there is room the same command stores exactly the events an undisturbed run stores."""
    import subprocess

    from plugin import simulate

    src = tmp_path / "fleet.jsonl"
    simulate.write_jsonl(src, 6000, seed=3)
    ref_db = tmp_path / "ref.duckdb"
    assert main(["import", str(src), "--db", str(ref_db), "--no-embed", "-q", "--json"]) == 0
    db = small_fs / "full.duckdb"
    capsys.readouterr()
    rc = main(["import", str(src), "--db", str(db), "--no-embed", "-q", "--json"])
    err = capsys.readouterr().err
    assert rc == 1 and "the disk is full" in err and "run the same command again" in err
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_fs)], check=True)
    assert db_rows(db, "SELECT count(*) FROM imports WHERE status = 'complete'")[0][0] == 0
    rc, s = run_import(capsys, src, "--db", db, "--no-embed")
    assert rc == 0
    keys = "SELECT event_key FROM events ORDER BY 1"
    assert db_rows(db, keys) == db_rows(ref_db, keys)
    assert db_rows(db, "SELECT count(*) FROM events")[0][0] == 6000 == s["sysmon_events"]
