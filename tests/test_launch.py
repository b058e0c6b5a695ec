"""The entry point's allocator choice: jemalloc for the long-running commands where the system
has it (a consumer's resident memory otherwise creeps up in glibc's arenas), never twice, never
for `main` called from Python, and a clear error for a path that is not a library."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin import memory
from plugin.config import load_config

ROOT = Path(__file__).resolve().parents[1]
JEMALLOC = next((c for c in memory.JEMALLOC_CANDIDATES if Path(c).is_file()), None)

# run as `python -c PROBE`: a process started again by the entry point reports whether jemalloc is
# mapped into it and what it was told; one that was not started again runs the command line
PROBE = """
import os, sys
from plugin import memory
if os.environ.get(memory.ALLOCATOR_ACTIVE_ENV):
    mapped = 'jemalloc' in open('/proc/self/maps').read()
    print('relaunched', mapped, memory.active_allocator(), flush=True)
    sys.exit(0)
from plugin.__main__ import run
sys.exit(run())
"""


def _probe(setting: str | None, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in memory.LAUNCHER_VARIABLES}
    env.pop("LD_PRELOAD", None)
    if setting is not None:
        env[memory.ALLOCATOR_ENV] = setting
    return subprocess.run([sys.executable, "-c", PROBE, *(argv or ("--help",))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_choose(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"\x7fELF")
    other = str(tmp_path / "missing.so")
    assert memory.choose_allocator("system", "consume", (str(lib),)) is None
    # auto: the first that exists, for a long-running command only
    assert memory.choose_allocator(None, "consume", (other, str(lib))) == str(lib)
    assert memory.choose_allocator("auto", "serve", (other, str(lib))) == str(lib)
    assert memory.choose_allocator("auto", "import", (other, str(lib))) is None
    assert memory.choose_allocator("auto", None, (other, str(lib))) is None
    assert memory.choose_allocator("auto", "consume", (other,)) is None  # none here: no error
    assert memory.choose_allocator(f" {lib} ", "import") == str(lib)  # named: any command
    with pytest.raises(memory.AllocatorError, match="SYSMON_BLT_ALLOCATOR=.*no such file"):
        memory.choose_allocator(other)


def test_command_of():
    assert memory.command_of(["-q", "--config", "consume", "import", "x"]) == "import"
    assert memory.command_of(["--model", "m", "-v", "consume", "--serve", "8080"]) == "consume"
    assert memory.command_of(["--version"]) is None


def test_command_of_knows_every_global_option_that_takes_a_value():
    # command_of keeps its own list so the launcher does not import the parser before exec;
    # a global option added with a value must be added there too, or its value reads as the command
    from plugin.cli.parser import build_parser

    valued = {opt for action in build_parser()._actions if action.option_strings
              and action.nargs != 0 and not isinstance(action, argparse._SubParsersAction)
              for opt in action.option_strings}
    assert valued == memory._VALUED


def test_relaunch_env_starts_again_once():
    env = memory.relaunch_env({"LD_PRELOAD": "/x/libfoo.so", "PATH": "/bin"},
                              "/l/libjemalloc.so.2")
    assert env["LD_PRELOAD"] == "/l/libjemalloc.so.2 /x/libfoo.so" and env["PATH"] == "/bin"
    assert env[memory.ALLOCATOR_ACTIVE_ENV] == "/l/libjemalloc.so.2"
    assert memory.relaunch_env(env, "/l/libjemalloc.so.2") is None  # the new process: no loop
    # the caller preloaded it already (space- or colon-separated): nothing to do
    assert memory.relaunch_env({"LD_PRELOAD": "/a.so:/l/libjemalloc.so.2"},
                               "/l/libjemalloc.so.2") is None


def test_launcher_variables_are_not_config_keys():
    # every SYSMON_BLT_* variable load_config does not know is an error; these two are the
    # launcher's and must not break a command
    cfg = load_config(None, {}, environ={memory.ALLOCATOR_ENV: "system",
                                         memory.ALLOCATOR_ACTIVE_ENV: "/l.so"})
    assert cfg is not None


def test_bad_path_is_a_usage_error():
    res = _probe("/nonexistent/libjemalloc.so.2")
    assert res.returncode == 2
    assert "SYSMON_BLT_ALLOCATOR=/nonexistent/libjemalloc.so.2: no such file" in res.stderr
    assert "relaunched" not in res.stdout


def test_system_keeps_the_process():
    res = _probe("system")
    assert "relaunched" not in res.stdout
    assert res.returncode == 0 and "usage: sysmon-blt" in res.stdout  # `--help` ran here


@pytest.mark.skipif(JEMALLOC is None or not sys.platform.startswith("linux"),
                    reason="needs jemalloc (Debian: libjemalloc2, which .ci/run installs)")
@pytest.mark.parametrize("setting,argv", [(None, ("consume", "--help")),
                                          ("auto", ("-q", "serve", "--help")),
                                          ("explicit", ("import", "--help"))])
def test_starts_again_with_jemalloc_mapped(setting, argv):
    res = _probe(JEMALLOC if setting == "explicit" else setting, *argv)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["relaunched", "True", "jemalloc", f"({JEMALLOC})"]


def test_a_failed_start_carries_on_with_the_system_allocator(tmp_path, monkeypatch, capsys):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv(memory.ALLOCATOR_ENV, str(lib))
    monkeypatch.delenv(memory.ALLOCATOR_ACTIVE_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    calls = []

    def refuse(path, argv, env):
        calls.append(env["LD_PRELOAD"])
        raise PermissionError("noexec")

    monkeypatch.setattr(os, "execve", refuse)
    assert memory.relaunch_with_allocator() is None
    assert calls == [str(lib)]
    assert "could not start with" in capsys.readouterr().err


@pytest.mark.skipif(JEMALLOC is None, reason="needs jemalloc (Debian: libjemalloc2)")
def test_auto_keeps_a_one_shot_command_on_the_system_allocator():
    res = _probe("auto", "import", "--help")
    assert "relaunched" not in res.stdout
    assert res.returncode == 0 and "usage: sysmon-blt import" in res.stdout
