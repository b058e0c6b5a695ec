"""What a failed command tells the user: an out-of-memory failure keeps its traceback at -v (the
OTRF folder's settle pass failed in a MERGE with no trace of where, even at -v)."""

from __future__ import annotations

import duckdb

import plugin.cli as cli


def test_out_of_memory_logs_its_traceback_at_verbose(monkeypatch, capsys, tmp_path):
    def boom(args):
        raise duckdb.OutOfMemoryException("failed to pin block of size 256.0 KiB")

    monkeypatch.setitem(cli.COMMANDS, "rescore", boom)
    rc = cli.main(["rescore", "--db", str(tmp_path / "x.duckdb"), "-v"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "DuckDB needs more memory than db_memory_limit allows" in err
    assert "command_failed" in err and "Traceback" in err and "boom" in err


def test_a_failed_settle_says_the_import_itself_is_stored(monkeypatch, capsys, tmp_path):
    """The second walk of a cold start (`plugin.pipeline.settle`) failed at the end of the OTRF
    folder's import: the user must learn that the events are stored and what completes the
    scoring, not only that the import failed."""
    from plugin import simulate
    from plugin.pipeline import settle
    from plugin.store import open_store

    def boom(*args, **kwargs):
        raise duckdb.OutOfMemoryException("failed to pin block of size 256.0 KiB")

    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "0")
    monkeypatch.setattr(settle, "settle_case", boom)
    log = tmp_path / "a.jsonl"
    simulate.write_jsonl(str(log), 1500, seed=11, anomaly_rate=0.02)
    db = tmp_path / "s.duckdb"
    rc = cli.main(["import", str(log), "--db", str(db), "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "the import itself finished: 1,500 new events are stored" in err
    assert f"sysmon-blt rescore --db {db}" in err
    assert "DuckDB needs more memory than db_memory_limit allows" in err
    s = open_store(db, read_only=True)
    try:
        assert s.event_count() == 1500
    finally:
        s.close()


def test_a_full_disk_message_hides_a_catalog_password(monkeypatch, capsys, tmp_path):
    """The disk-full advice printed the raw error, which a DuckLake catalog's client may fill
    with its connection string; every other failure message hides the password."""
    def full(args):
        raise duckdb.IOException("could not write to ducklake:postgres:host=db password=s3cret "
                                 "user=x: No space left on device")

    monkeypatch.setitem(cli.COMMANDS, "rescore", full)
    rc = cli.main(["rescore", "--db", str(tmp_path / "x.duckdb")])
    err = capsys.readouterr().err
    assert rc == 1 and "the disk is full" in err
    assert "s3cret" not in err and "password=***" in err
