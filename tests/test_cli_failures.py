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
