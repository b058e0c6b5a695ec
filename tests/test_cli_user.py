"""The command line as a new user meets it: real processes, real files, exit codes and messages.

Each test is one of the defects a first-time user ran into (issue: "the command line as users
expect it"); they run `sysmon-blt` as a subprocess, so argument parsing, stdout/stderr and exit
codes are exercised exactly as in a shell.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXE = [sys.executable, "-m", "plugin.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, stdin: str | None = None, timeout: float = 300, cwd: Path | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SYSMON_BLT_DB", None)
    return subprocess.run([*EXE, *args], capture_output=True, text=True, input=stdin,
                          timeout=timeout, cwd=cwd or ROOT, env=env)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-user")


@pytest.fixture(scope="module")
def events(work) -> Path:
    """Simulated events with injected anomalies (enough that hosts are past booting)."""
    out = work / "events.jsonl"
    r = run("simulate", "--events", "1500", "--seed", "5", "--anomaly-rate", "0.05", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def scored_db(work, events) -> Path:
    """A database imported with the shipped model: alerts to list, show, mark and enrich."""
    db = work / "scored.duckdb"
    r = run("import", str(events), "--db", str(db), "-q")
    assert r.returncode == 0, r.stderr
    return db


# -- 1. global flags mean the same before and after the command ------------------------------
@pytest.mark.parametrize("before", [True, False])
def test_config_flag_is_read_before_or_after_the_command(work, events, before):
    bad = work / "bad.yaml"
    bad.write_text("batch_sise: 10\n")  # a typo must not pass unnoticed
    flags = ["--config", str(bad)]
    args = [*flags, "import", str(events), "--db", str(work / "x.duckdb")] if before else \
        ["import", str(events), "--db", str(work / "x.duckdb"), *flags]
    r = run(*args)
    assert r.returncode == 2
    assert "batch_sise" in r.stderr


@pytest.mark.parametrize("before", [True, False])
def test_model_flag_is_read_before_or_after_the_command(work, events, before):
    flags = ["--model", str(work / "no-such-model")]
    args = [*flags, "import", str(events)] if before else ["import", str(events), *flags]
    r = run(*args, "--db", str(work / "m.duckdb"))
    assert r.returncode == 2
    assert "no-such-model" in r.stderr


def test_verbose_before_the_command_logs(work, events):
    r = run("-v", "import", str(events), "--no-embed", "--db", str(work / "v.duckdb"))
    assert r.returncode == 0, r.stderr
    assert "input_imported" in r.stderr


def test_quiet_after_the_command_silences_warnings(work):
    empty = work / "empty-q"
    empty.mkdir()
    r = run("import", str(empty), "--db", str(work / "q.duckdb"), "-q", "--no-embed")
    assert r.returncode == 0
    assert "input_imported" not in r.stderr


# -- 2. triage without SQL -----------------------------------------------------------------
def test_alerts_list_show_mark(scored_db):
    r = run("alerts", "list", "--db", str(scored_db), "--json", "--top", "3")
    assert r.returncode == 0, r.stderr
    alerts = json.loads(r.stdout)
    assert 1 <= len(alerts) <= 3
    assert alerts == sorted(alerts, key=lambda a: -a["score"])
    first = alerts[0]["alert_id"]

    r = run("alerts", "show", first[:10], "--db", str(scored_db))  # a unique prefix is enough
    assert r.returncode == 0, r.stderr
    assert first in r.stdout and "why it stands out" in r.stdout
    assert "  1. " in r.stdout and "most surprising" in r.stdout and "lineage" in r.stdout

    r = run("alerts", "--db", str(scored_db), "mark", first, "--status", "false_positive",
            "--note", "backup agent", "--analyst", "bob")
    assert r.returncode == 0, r.stderr
    assert "open -> false_positive" in r.stdout

    r = run("alerts", "list", "--db", str(scored_db), "--status", "false_positive", "--json")
    assert [a["alert_id"] for a in json.loads(r.stdout)] == [first]
    r = run("alerts", "show", first, "--db", str(scored_db))
    assert "bob: false_positive (backup agent)" in r.stdout


def test_alerts_host_filter_and_unknown_id(scored_db):
    r = run("alerts", "list", "--db", str(scored_db), "--host", "NO-SUCH-HOST")
    assert r.returncode == 0 and r.stdout.startswith("no alerts")
    r = run("alerts", "show", "zzzz", "--db", str(scored_db))
    assert r.returncode == 2
    assert "no alert with id 'zzzz'" in r.stderr


# -- 3. enrich -----------------------------------------------------------------------------
def test_enrich_excludes_the_event_itself_and_takes_an_alert_id(scored_db):
    alerts = json.loads(run("alerts", "list", "--db", str(scored_db), "--json").stdout)
    a = alerts[-1]
    r = run("enrich", "--db", str(scored_db), stdin=json.dumps({"alert_id": a["alert_id"]}))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["alert_id"] == a["alert_id"] and "error" not in out["sysmon_blt"]
    keys = [n["event_key"] for n in out["sysmon_blt"]["neighbors"]]
    assert a["event_key"] not in keys and keys


def test_enrich_bad_input_gets_an_error_object_per_record_and_exit_1(scored_db):
    r = run("enrich", "--db", str(scored_db), stdin='{"foo": 1}\nnot json\n')
    assert r.returncode == 1
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 2
    assert "unrecognized" in lines[0]["sysmon_blt"]["error"] and lines[0]["sysmon_blt"]["line"] == 1
    assert lines[1]["sysmon_blt"]["error"].startswith("not JSON") and lines[1]["sysmon_blt"]["line"] == 2
    assert "2 of 2 record(s) could not be enriched" in r.stderr


# -- 3b. the first fit learns the baseline the user imported -------------------------------
def test_a_stores_first_fit_takes_every_event_and_a_refit_holds_flags_back(work, scored_db):
    """Issue 13: holding back the cold start's flags on a first fit taught a clean fleet's own
    programs as "never seen"; the user who fits vouches for what they imported. Refits (and the
    learning period's automatic fit) still keep what the current fit flags out."""
    import shutil

    flagged = run("alerts", "list", "--db", str(scored_db), "--json")
    assert json.loads(flagged.stdout)  # the cold start flagged something to hold back
    first, held = work / "first.duckdb", work / "held.duckdb"
    shutil.copy(scored_db, first)
    shutil.copy(scored_db, held)

    f = json.loads(run("fit", "--db", str(first), "--json").stdout)
    assert f["first_fit"] and f["accept_outliers"]
    assert f["held_back_outlier_texts"] == 0
    h = json.loads(run("fit", "--db", str(held), "--hold-back-outliers", "--json").stdout)
    assert h["first_fit"] and h["held_back_outlier_texts"] > 0
    assert h["baseline_texts"] < f["baseline_texts"]

    assert run("rescore", "--db", str(first), "-q").returncode == 0  # scored by fit 1 now
    outliers = int(subprocess.run(
        [sys.executable, "-c", "import duckdb,sys; print(duckdb.connect(sys.argv[1], read_only=True)"
         ".execute(\"SELECT count(DISTINCT e.text_hash) FROM assignments a JOIN events e "
         "USING (event_key) WHERE a.model = 'blt' AND a.is_outlier\").fetchone()[0])", str(first)],
        capture_output=True, text=True, check=True).stdout)
    r = json.loads(run("fit", "--db", str(first), "--json").stdout)
    assert not r["first_fit"] and not r["accept_outliers"]
    assert r["held_back_outlier_texts"] == outliers
    assert run("fit", "--db", str(first), "--accept-outliers", "--hold-back-outliers").returncode == 2


# -- 4. the way out of --no-embed is named -------------------------------------------------
def test_no_embed_then_fit_names_rescore(work, events):
    db = work / "noembed.duckdb"
    assert run("import", str(events), "--db", str(db), "--no-embed", "-q").returncode == 0
    r = run("fit", "--db", str(db))
    assert r.returncode == 2
    assert "rescore" in r.stderr
    r = run("import", str(events), "--db", str(db), "--json", "-q")  # same file, with the model
    s = json.loads(r.stdout)
    assert s["inputs_skipped_same_sha256"] == 1
    assert "nothing new" in s["note"] and "rescore" in s["note"]
    assert "embedded and scored" not in s["note"]


# -- 5. a run that reads nothing says so ---------------------------------------------------
def test_empty_folder_and_folder_without_logs_warn(work):
    empty = work / "empty"
    empty.mkdir()
    (work / "notes").mkdir()
    (work / "notes" / "readme.txt").write_text("nothing to see")
    for folder in (empty, work / "notes"):
        r = run("import", str(folder), "--db", str(work / "e.duckdb"), "--no-embed")
        assert r.returncode == 0
        assert "no log files in" in r.stderr and ".evtx" in r.stderr


def test_random_bytes_named_evtx_warns_with_the_file_and_reason(work):
    bad = work / "random.evtx"
    bad.write_bytes(os.urandom(4096))
    r = run("import", str(bad), "--db", str(work / "r.duckdb"), "--no-embed")
    assert r.returncode == 0  # the run did its job: the damage is kept as a dead letter
    assert "random.evtx" in r.stderr and "dead_letters" in r.stderr
    assert "no Sysmon events" in r.stderr
    assert "random.evtx" in r.stdout  # the summary names the input that held none


def test_dead_letter_lines_are_counted_from_one(work, events):
    f = work / "broken.jsonl"
    lines = events.read_text().splitlines()[:3]
    f.write_text("\n".join([lines[0], lines[1], "{broken", lines[2]]) + "\n")
    r = run("import", str(f), "--db", str(work / "b.duckdb"), "--no-embed")
    assert r.returncode == 0
    assert "broken.jsonl line 3:" in r.stderr


def test_summary_is_a_readable_table(work, events):
    r = run("import", str(events), "--db", str(work / "t.duckdb"), "--no-embed")
    assert r.returncode == 0
    assert "Sysmon events" in r.stdout and "database" in r.stdout
    assert "{'" not in r.stdout and "[{" not in r.stdout  # no Python reprs


# -- 6. stdout closed early ----------------------------------------------------------------
def test_import_piped_into_head_exits_cleanly(work, events):
    db = work / "pipe.duckdb"
    cmd = " ".join([*EXE, "import", str(events), "--db", str(db), "--no-embed", "-q"])
    r = subprocess.run(["bash", "-c", f"{cmd} | head -1; echo rc=${{PIPESTATUS[0]}}"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "rc=0" in r.stdout
    assert "BrokenPipeError" not in r.stderr and "Traceback" not in r.stderr
    assert db.is_file()


# -- 7. simulate -----------------------------------------------------------------------------
def test_simulate_to_a_missing_broker_fails_fast_and_quietly():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = run("simulate", "--events", "5", "--kafka", f"127.0.0.1:{port}", "--topic", "t", timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr
    assert len(r.stderr.splitlines()) <= 3  # one message, not librdkafka's retry log


def test_simulate_says_when_a_small_run_holds_no_anomaly(work):
    r = run("simulate", "--events", "40", "--anomaly-rate", "0.01", "--out", str(work / "s.jsonl"))
    assert r.returncode == 0
    assert "injected no anomaly" in r.stderr


# -- 8. --help teaches -----------------------------------------------------------------------
def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_says_what_it_does_and_its_default():
    import argparse

    from plugin.cli import build_parser

    missing, no_default = [], []
    for name, sub in _subparsers(build_parser()):
        for a in sub._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not a.help:
                missing.append(f"{name} {a.option_strings or a.dest}")
            elif a.option_strings and a.default not in (None, False, argparse.SUPPRESS) \
                    and "default" not in a.help:
                no_default.append(f"{name} {a.option_strings}")
    assert not missing, missing
    assert not no_default, no_default


def test_help_texts_read_right():
    r = run("eval", "--help")
    words = " ".join(r.stdout.split())  # help wraps to the terminal
    assert "1% FPR" in words and "%%" not in words
    r = run("train", "--help")
    assert "default-model" not in r.stdout and "--out my-model/" in r.stdout
    r = run("--help")
    assert r.returncode == 0 and "alerts" in r.stdout


def test_kafka_settings_come_from_the_environment_with_dots():
    from plugin.config import load_config
    from plugin.sources.kafka import redacted

    cfg = load_config(None, {}, environ={"SYSMON_BLT_KAFKA_SASL_PASSWORD": "hunter2",
                                         "SYSMON_BLT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                         "SYSMON_BLT_STREAM_BATCH_MS": "50"})
    assert cfg.kafka == {"sasl.password": "hunter2", "security.protocol": "SASL_SSL"}
    assert cfg.stream_batch_ms == 50
    assert redacted(cfg.kafka) == {"sasl.password": "***", "security.protocol": "SASL_SSL"}


def test_the_consumers_cache_bound_is_checked():
    from plugin.config import load_config
    from plugin.errors import UsageError

    assert load_config(None, {}, environ={}).stream_cache_texts == 10000
    assert load_config(None, {}, environ={"SYSMON_BLT_STREAM_CACHE_TEXTS": "50000"}
                       ).stream_cache_texts == 50000
    with pytest.raises(UsageError, match="stream_cache_texts"):
        load_config(None, {}, environ={"SYSMON_BLT_STREAM_CACHE_TEXTS": "10"})


def test_a_bad_suppression_rule_is_a_usage_error_naming_it(work, events):
    cfg = work / "rules-bad.yaml"
    cfg.write_text("suppress:\n  - text: '([unclosed'\n")
    r = run("import", str(events), "--db", str(work / "rules.duckdb"), "--config", str(cfg))
    assert r.returncode == 2
    assert "suppress[0]: text is not a valid regex" in r.stderr


def test_prune_removes_old_events_and_says_how_many(work, events):
    db = work / "prune.duckdb"
    assert run("import", str(events), "--db", str(db), "--no-embed", "-q").returncode == 0
    r = run("prune", "--older-than", "36500", "--db", str(db), "--json")  # a century: nothing
    assert r.returncode == 0 and json.loads(r.stdout)["removed"]["events"] == 0
    r = run("prune", "--older-than", "0.5", "--db", str(db))  # simulated events are from Jan 2026
    assert r.returncode == 0 and "1,500 events" in r.stdout
    assert run("prune", "--older-than", "-1", "--db", str(db)).returncode == 2


def test_rescore_does_not_inflate_alert_counts(work, events):
    """rescore re-scores every stored event: alert counts must come out as an import made
    them, not grow with each rescore (it folded every outlier in again)."""
    import duckdb

    db = work / "recount.duckdb"
    assert run("import", str(events), "--db", str(db), "-q").returncode == 0

    def counts():
        con = duckdb.connect(str(db), read_only=True)
        try:
            return dict(con.execute("SELECT alert_id, count FROM alerts").fetchall())
        finally:
            con.close()

    before = counts()
    assert run("rescore", "--db", str(db), "-q").returncode == 0
    assert counts() == before


def test_summary_says_which_calibration_scored():
    """A cold start's flags must not read as a fitted baseline's: the summary names the
    calibration of the model that alerts (the shadow's never counts)."""
    from plugin.cli.ingest import _scored_with

    shadow = {"name": "score:linformer", "alerts": False, "calibration": {"calibration": "fit 9"}}
    case = {"name": "score:blt", "alerts": True, "calibration": {
        "calibration": "case", "case_events": 20000, "context": "case", "novel_creations": 107}}
    early = {"name": "score:blt", "alerts": True, "calibration": {
        "calibration": "shipped (case not yet calibrated)", "case_events": 358, "outlier_bar": 2.0}}
    fit = {"name": "score:blt", "alerts": True, "calibration": {"calibration": "fit 3"}}
    assert _scored_with([shadow, case]) == ("no fit: calibrated on this case (20,000 events), with "
                                            "the case's context (107 binaries new to the case)")
    assert "358 events are too few" in _scored_with([early]) and "bar of 2.0" in _scored_with([early])
    assert _scored_with([shadow, fit]).startswith("fit 3")
    assert _scored_with([shadow]) is None
