"""Untrusted artefacts (issue 17, item 4): a model directory someone handed over is checked before
anything in it is loaded, and secrets never reach a log line.

* a pickle in the directory (by name or by its first bytes), weights of the wrong shapes, or a
  weight file that is a link out of the directory: refused, exit 2, the file and the reason named;
* a catalog password and a Kafka SASL password given to a command are in none of its output.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from plugin.cli import main
from plugin.models.checkpoint import file_sha256
from plugin.resources import default_model_dir


@pytest.fixture
def model_copy(tmp_path) -> Path:
    d = tmp_path / "handed-over"
    shutil.copytree(default_model_dir(), d)
    return d


@pytest.fixture
def events(tmp_path) -> Path:
    from plugin import simulate

    src = tmp_path / "ev.jsonl"
    simulate.write_jsonl(src, 20, seed=1)
    return src


def refused(capsys, model: Path, events: Path, tmp_path: Path) -> str:
    rc = main(["import", str(events), "--db", str(tmp_path / "x.duckdb"), "--model", str(model),
               "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not (tmp_path / "x.duckdb").exists() or "Traceback" not in err
    return err


def _rewrite_entry(model: Path, name: str, **changes) -> None:
    cfg_path = model / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["models"][name].update(changes)
    cfg_path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("name, blob", [
    ("extra.pkl", pickle.dumps({"a": 1})),
    ("weights.pt", b"PK\x03\x04 a torch.save archive"),
    ("notes", pickle.dumps(["no suffix, a pickle all the same"], protocol=4)),
])
def test_a_model_directory_holding_a_pickle_is_refused(model_copy, events, tmp_path, capsys,
                                                       name, blob):
    (model_copy / name).write_bytes(blob)
    err = refused(capsys, model_copy, events, tmp_path)
    assert name in err and "pickle" in err


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(model_copy, events, tmp_path,
                                                              capsys):
    """Even with its sha256 recorded (a tamperer would), a pickle named like the weights is read
    as safetensors only, and refused."""
    w = model_copy / "blt.safetensors"
    w.write_bytes(pickle.dumps(object, protocol=2))
    _rewrite_entry(model_copy, "blt", sha256=file_sha256(w))
    err = refused(capsys, model_copy, events, tmp_path)
    assert "blt.safetensors" in err and ("safetensors" in err or "pickle" in err)


def test_weights_of_the_wrong_shape_are_refused_naming_the_tensor(model_copy, events, tmp_path,
                                                                  capsys):
    w = model_copy / "blt.safetensors"
    tensors = load_file(str(w))
    name = sorted(k for k, t in tensors.items() if t.dim() == 2)[0]
    tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, str(w))
    _rewrite_entry(model_copy, "blt", sha256=file_sha256(w))
    err = refused(capsys, model_copy, events, tmp_path)
    assert name in err and "shape" in err


def test_a_weight_file_outside_the_directory_is_refused(model_copy, events, tmp_path, capsys):
    _rewrite_entry(model_copy, "blt", file="../blt.safetensors")
    assert "plain file name" in refused(capsys, model_copy, events, tmp_path)
    _rewrite_entry(model_copy, "blt", file="blt.safetensors")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(model_copy / "blt.safetensors", outside)
    os.symlink(outside, model_copy / "blt.safetensors")  # same bytes, same sha256
    assert "outside the model directory" in refused(capsys, model_copy, events, tmp_path)


def test_passwords_given_to_a_command_are_in_none_of_its_output(tmp_path, capsys, monkeypatch):
    """A catalog that does not answer and a broker that does not speak SASL: the errors and the
    debug log name them, never their passwords."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    rc = main(["-vv", "import", str(tmp_path), "--db",
               f"ducklake:postgres:dbname=soc host=127.0.0.1 port={port} password=hunter2-pg"])
    out = capsys.readouterr()
    assert rc in (1, 2) and "hunter2" not in out.out + out.err
    assert "password=***" in out.err
    monkeypatch.setenv("SYSMON_BLT_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("SYSMON_BLT_KAFKA_SASL_USERNAME", "soc")
    monkeypatch.setenv("SYSMON_BLT_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SYSMON_BLT_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("SYSMON_BLT_KAFKA_DEBUG", "conf,security,broker")
    monkeypatch.setenv("SYSMON_BLT_KAFKA_SESSION_TIMEOUT_MS", "6000")
    import signal
    import threading
    import time

    # stop the consumer with SIGTERM a few seconds after it took the signal over (its stop
    # handler); a guard handler of the test's own means an early signal never ends pytest
    guard = signal.signal(signal.SIGTERM, lambda *_: None)
    ours = signal.getsignal(signal.SIGTERM)
    done = threading.Event()

    def stop_it() -> None:
        deadline = time.monotonic() + 120
        while signal.getsignal(signal.SIGTERM) is ours and time.monotonic() < deadline:
            if done.wait(0.1):
                return
        if not done.wait(5.0):  # librdkafka tries the broker meanwhile, and logs
            os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_it, daemon=True)
    stopper.start()
    try:
        rc = main(["-vv", "consume", "--bootstrap", f"127.0.0.1:{port}", "--topic", "t",
                   "--group", "g", "--db", str(tmp_path / "c.duckdb"), "--no-embed"])
    finally:
        done.set()
        stopper.join()
        signal.signal(signal.SIGTERM, guard)
    assert rc == 0  # stopped by its signal, as a service manager stops it
    out = capsys.readouterr()
    said = out.out + out.err
    assert "hunter2" not in said, [line for line in said.splitlines() if "hunter2" in line][:3]
    assert "sasl" in said.lower() or "SASL" in said


def test_event_content_that_looks_like_sql_is_stored_as_is(tmp_path, capsys):
    """Event fields full of quotes and statements go in and come back byte for byte, through
    import, alerts and the read-backs; no table is touched (SQL never carries event content)."""
    from conftest import winlogbeat8

    nasty = "x'); DROP TABLE events; --\" \\' $$ {{}} %s ?"
    doc = winlogbeat8()
    doc["winlog"]["computer_name"] = "HOST'; DELETE FROM alerts; --"
    doc["winlog"]["event_data"] = dict(doc["winlog"]["event_data"], CommandLine=nasty,
                                       Image="C:\\x\\'evil'.exe", User="d'om\\u'ser")
    src = tmp_path / "nasty.jsonl"
    src.write_text(json.dumps(doc) + "\n")
    db = tmp_path / "n.duckdb"
    assert main(["import", str(src), "--db", str(db), "-q", "--json"]) == 0
    capsys.readouterr()
    # a host filter with the same content goes into a query as a value
    assert main(["alerts", "list", "--db", str(db), "--host", doc["winlog"]["computer_name"],
                 "--json"]) == 0
    capsys.readouterr()
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    computer, fields = con.execute("SELECT computer, fields FROM events").fetchone()
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    con.close()
    assert computer == doc["winlog"]["computer_name"]
    assert json.loads(fields)["CommandLine"] == nasty
    assert {"events", "alerts", "assignments", "dead_letters"} <= tables


def test_a_failure_that_repeats_a_connection_string_hides_its_password(monkeypatch, capsys):
    """Any command's unexpected failure (the message and, at -v, the traceback) goes out with a
    password it carries hidden: database clients repeat the connection string they failed with."""
    import plugin.cli as cli

    def fails(args):
        raise RuntimeError('could not connect to "dbname=soc host=db password=hunter2 user=x" '
                           "or postgresql://soc:hunter2@db/soc")

    monkeypatch.setitem(cli.COMMANDS, "prune", fails)
    for verbosity in ([], ["-v"]):
        assert cli.main([*verbosity, "prune", "--db", "x.duckdb", "--older-than", "30"]) == 1
        out = capsys.readouterr()
        said = out.out + out.err
        assert "hunter2" not in said and "password=***" in said and "soc:***@db" in said
