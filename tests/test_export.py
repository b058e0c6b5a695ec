"""`sysmon-blt export`: tables out as Parquet or CSV, row for row, streamed by DuckDB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from plugin.cli import main
from plugin.store.export import DEFAULT_TABLES, sql_path


@pytest.fixture(scope="module")
def imported_db(tmp_path_factory) -> Path:
    """A small imported case: events embedded and scored with the shipped model, so
    assignments, vectors and alerts have rows."""
    from plugin import simulate

    d = tmp_path_factory.mktemp("export")
    src = d / "sim.jsonl"
    simulate.write_jsonl(str(src), 800, seed=3)
    db = d / "case.duckdb"
    assert main(["import", str(src), "--db", str(db), "-q"]) == 0
    return db


def counts(db: Path, tables) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


def query(sql: str) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def exported(path: Path, fmt: str) -> int:
    reader = "read_parquet" if fmt == "parquet" else "read_csv_auto"
    return query(f"SELECT count(*) FROM {reader}({sql_path(path)})")[0][0]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_row_counts_equal_the_tables(imported_db, tmp_path, capsys, fmt):
    out = tmp_path / f"out-{fmt}"
    rc = main(["export", "--db", str(imported_db), "--out", str(out), "--format", fmt, "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    want = counts(imported_db, DEFAULT_TABLES)
    # 8 integrity rows: one per simulated host
    assert want["events"] == 800 and want["assignments"] > 0 and want["integrity"] == 8
    got = {r["table"]: r["rows"] for r in result["tables"]}
    assert got == want
    for table, n in want.items():
        assert exported(out / f"{table}.{fmt}", fmt) == n, table
    # vectors are large: only on request; no partial files left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.{fmt}" for t in DEFAULT_TABLES)


def test_parquet_keeps_types_and_text(imported_db, tmp_path, capsys):
    out = tmp_path / "typed"
    assert main(["export", "--db", str(imported_db), "--out", str(out), "--tables",
                 "events,integrity"]) == 0
    text = capsys.readouterr().out
    assert "events" in text and "800 rows" in text and "2 table(s)" in text
    con = duckdb.connect(str(imported_db), read_only=True)
    try:
        src = con.execute("SELECT event_key, ts, normalized FROM events "
                          "ORDER BY event_key LIMIT 5").fetchall()
    finally:
        con.close()
    events, integrity = sql_path(out / "events.parquet"), sql_path(out / "integrity.parquet")
    back = query(f"SELECT event_key, ts, normalized FROM read_parquet({events}) "
                 "ORDER BY event_key LIMIT 5")
    assert back == src
    gaps = query(f"SELECT record_id_gaps FROM read_parquet({integrity})")[0][0]
    assert json.loads(gaps) == []


def test_vectors_on_request(imported_db, tmp_path, capsys):
    out = tmp_path / "vec"
    assert main(["export", "--db", str(imported_db), "--out", str(out), "--tables",
                 "event_vectors", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["tables"]
    n = counts(imported_db, ["event_vectors"])["event_vectors"]
    assert r["table"] == "event_vectors" and r["rows"] == n > 0
    assert exported(out / "event_vectors.parquet", "parquet") == n


def test_quoted_output_path(imported_db, tmp_path, capsys):
    out = tmp_path / "it's a case; DROP TABLE events"
    assert main(["export", "--db", str(imported_db), "--out", str(out), "--tables", "imports"]) == 0
    want = counts(imported_db, ["imports"])["imports"]
    assert exported(out / "imports.parquet", "parquet") == want
    assert counts(imported_db, ["events"])["events"] == 800


def test_sql_path_refuses_control_characters(tmp_path):
    from plugin.errors import UsageError

    quoted = str((tmp_path / "a'b").resolve()).replace("'", "''")
    assert sql_path(tmp_path / "a'b") == f"'{quoted}'"
    with pytest.raises(UsageError):
        sql_path(tmp_path / "a\nb")


def test_usage_errors(imported_db, tmp_path, capsys):
    rc = main(["export", "--db", str(tmp_path / "nope.duckdb"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["export", "--db", str(imported_db), "--out", str(tmp_path / "o"), "--tables",
               "events,secrets"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown table secrets" in err and "event_vectors" in err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    rc = main(["export", "--db", str(imported_db), "--out", str(a_file)])
    assert rc == 2 and "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "--db", str(imported_db), "--out", str(tmp_path), "--format", "xlsx"])
    assert exc.value.code == 2


def test_database_held_by_another_process(imported_db, tmp_path, capsys):
    held = tmp_path / "held.duckdb"
    held.write_bytes(imported_db.read_bytes())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('ready', flush=True); time.sleep(60)", str(held)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        rc = main(["export", "--db", str(held), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        # a runtime failure (the same command works once the file is free), not a usage error
        assert rc == 1 and "open in another process" in err
        # the message names what holds the file, so the user knows what to stop
        assert f"PID {holder.pid}" in err and "time.sleep" in err
    finally:
        holder.kill()
        holder.wait()


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("--tables", "event_vectors", "integrity", "read-only", "read_parquet"):
        assert word in out, word


def test_a_table_an_older_database_lacks_is_skipped(imported_db, tmp_path, capsys):
    old = tmp_path / "old.duckdb"
    old.write_bytes(imported_db.read_bytes())
    con = duckdb.connect(str(old))
    con.execute("DROP TABLE integrity")  # as a file from before migration 7
    con.close()
    rc = main(["export", "--db", str(old), "--out", str(tmp_path / "o"), "--tables",
               "imports,integrity"])
    out = capsys.readouterr().out
    assert rc == 0 and "integrity  skipped: not in this database" in out
    assert "1 table(s)" in out and not (tmp_path / "o" / "integrity.parquet").exists()


def test_wide_rows_export_within_a_small_pool(tmp_path, capsys, monkeypatch):
    """A row group at DuckDB's default size (122,880 rows) of ~3 KB events is ~350 MB, held
    whole before it is written: the OTRF folder's store could not be exported at 512 MB. Here
    40,000 rows of ~2 KB against a 64 MB pool (DuckDB's default grouping fails on them)."""
    from plugin.store import open_store

    db = tmp_path / "wide.duckdb"
    open_store(db).close()  # the schema
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO events (event_key, source, event_id, normalized, text_hash, raw, "
                "imported_at) SELECT 'k' || i, 'src', 1, 'eid=1 image=' || i, md5(i::VARCHAR), "
                "repeat(md5(i::VARCHAR), 64), now() FROM range(40000) t(i)")
    con.close()
    monkeypatch.setenv("SYSMON_BLT_DB_MEMORY_LIMIT", "64MB")
    out = tmp_path / "out"
    assert main(["export", "--db", str(db), "--out", str(out), "--tables", "events", "-q"]) == 0
    assert exported(out / "events.parquet", "parquet") == 40000
    assert query(f"SELECT max(strlen(raw)) FROM read_parquet({sql_path(out / 'events.parquet')})") \
        == [(2048,)]


def test_row_groups_are_sized_from_the_pool():
    from plugin.store.export import MAX_ROW_GROUP, MIN_ROW_GROUP, parse_size, row_group_rows

    assert parse_size("244.1 MiB") == int(244.1 * 2**20)
    assert parse_size("1.0 GiB") == 2**30
    assert row_group_rows(256 * 2**20, 3000) == 256 * 2**20 // 8 // 3000
    assert row_group_rows(2**40, 10) == MAX_ROW_GROUP
    assert row_group_rows(2**20, 10**6) == MIN_ROW_GROUP
