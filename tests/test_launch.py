"""The entry point's allocator choice: jemalloc where the system has it (a consumer's resident
memory otherwise creeps up in glibc's arenas), never twice, never for `main` called from Python,
and a clear error for a path that is not a library."""

from __future__ import annotations

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


def _probe(setting: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in memory.LAUNCHER_VARIABLES}
    env.pop("LD_PRELOAD", None)
    if setting is not None:
        env[memory.ALLOCATOR_ENV] = setting
    return subprocess.run([sys.executable, "-c", PROBE, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_choose(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"\x7fELF")
    other = str(tmp_path / "missing.so")
    assert memory.choose_allocator("system", (str(lib),)) is None
    assert memory.choose_allocator(None, (other, str(lib))) == str(lib)  # auto: the first that exists
    assert memory.choose_allocator("auto", (other,)) is None  # none on this system: glibc, no error
    assert memory.choose_allocator(f" {lib} ") == str(lib)
    with pytest.raises(memory.AllocatorError, match="SYSMON_BLT_ALLOCATOR=.*no such file"):
        memory.choose_allocator(other)


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
    cfg = load_config(None, {}, environ={memory.ALLOCATOR_ENV: "system", memory.ALLOCATOR_ACTIVE_ENV: "/l.so"})
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
@pytest.mark.parametrize("setting", [None, "auto", "explicit"])
def test_starts_again_with_jemalloc_mapped(setting):
    res = _probe(JEMALLOC if setting == "explicit" else setting)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["relaunched", "True", "jemalloc", f"({JEMALLOC})"]
