"""Bounding what a process holds: freed heap returned to the system between inference batches,
least-recently-used bounds for per-text state, and the allocator a command starts with.

Every embed call allocates tensors of new sizes; glibc keeps the freed blocks, fragmented, so
without a trim a full OTRF import held 1.29 GB of free-but-kept heap (measured with mallinfo) on
top of what it used. A trim returns those pages, but the next batch then faults its working set
back in, page by page: trimming after every batch cost the BLT 30% of its throughput (3,000
distinct OTRF texts on 2 cores, fp32: 171 texts/s against 241 untrimmed). So a trim runs only
once the process's resident memory has grown `TRIM_SLACK_BYTES` past what it held right after the
previous trim. The peak does not rise for it: a batch's own working set peaks about that far
above the trimmed level anyway (the same run: peak RSS 551 MB trimming every batch, 633 MB with
the slack, at 219-255 texts/s). A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: how far resident memory may grow past its level after the last trim before the next one
TRIM_SLACK_BYTES = 256 * 2**20


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_after_last_trim: int | None = None  # resident bytes right after the latest trim


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc cannot say."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def release_freed_heap(force: bool = False) -> bool:
    """Return freed heap to the system when resident memory has grown `TRIM_SLACK_BYTES` since
    the last trim (always with ``force``, or where the resident size cannot be read). Returns
    whether it trimmed. Cheap when it does not: one read of /proc/self/statm."""
    global _after_last_trim
    if _MALLOC_TRIM is None:
        return False
    now = resident_bytes()
    if not force and now is not None and _after_last_trim is not None \
            and now <= _after_last_trim + TRIM_SLACK_BYTES:
        return False
    _MALLOC_TRIM(0)
    _after_last_trim = resident_bytes()
    return True


class LRU(OrderedDict[K, V]):
    """A mapping that keeps its ``max_entries`` most recently used entries.

    The per-text state of a long-running consumer (vectors, scores) must stop growing with the
    stream's distinct texts, and dropping it all at once when a bound is reached (the earlier
    clear-when-full) made every routine text pay a database read and a model pass again in the
    same batch. Here a routine text stays, because it is used again and again; a text seen once
    is the first out. `get` and item reads count as a use; `in` does not."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        super().__init__()
        self.max_entries = max_entries

    def __getitem__(self, key: K) -> V:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key: K, default: V | None = None) -> V | None:
        if key in self:
            return self[key]
        return default

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)


# -- the allocator -------------------------------------------------------------------------------
# A long-running consumer and a large import allocate and free millions of small Python objects
# and DuckDB buffers from several threads. With glibc's malloc the freed memory stays scattered
# over per-thread arenas, so resident memory creeps up with no reachable state behind it (a
# consumer at 400 events/s: 329 -> 553 MiB in four minutes while its bounded caches held still;
# its embedding worker sat ~150 MiB higher than with jemalloc). jemalloc returns such memory by
# itself (README, SOC deployment). A process's allocator is fixed when it starts, so the choice
# is an environment variable read by the entry points (`plugin.__main__`, `plugin.cli.__main__`),
# not a configuration key:
#
# - ``SYSMON_BLT_ALLOCATOR=auto`` (the default): for the long-running commands (`consume`,
#   `serve`) and where the system has jemalloc (Debian and Ubuntu: ``libjemalloc2``; the Docker
#   images install it), the entry point starts itself again once with it preloaded
#   (``LD_PRELOAD``, same process id); embedding workers inherit it. Otherwise glibc's malloc.
# - ``system``: never change the allocator.
# - a path to a ``libjemalloc.so``: that library, or a usage error (exit 2) if it is not a file.
#
# `plugin.cli.main` called from Python (tests, notebooks) never replaces its process.


ALLOCATOR_ENV = "SYSMON_BLT_ALLOCATOR"
#: set in the environment of a process started again with jemalloc: names the library, so the
#: new process neither starts once more nor guesses what it runs on
ALLOCATOR_ACTIVE_ENV = "SYSMON_BLT_ALLOCATOR_ACTIVE"
#: variables of this launcher, not configuration keys (`plugin.config` leaves them alone)
LAUNCHER_VARIABLES = frozenset({ALLOCATOR_ENV, ALLOCATOR_ACTIVE_ENV})
#: where Debian, Ubuntu, Fedora and Alpine install jemalloc's shared library
JEMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)


#: the commands `auto` starts with jemalloc: the long-running ones, where memory must stay flat
#: for days. An import ran 5-25% slower with it on the LSASS captures (its embedding worker
#: was slower in three pairs of runs, README), so a one-shot command keeps glibc's malloc unless
#: the variable names the library.
LONG_RUNNING = frozenset({"consume", "serve"})
#: global options that take a value (the command line's first other word is the command)
_VALUED = frozenset({"--config", "--model"})


def command_of(argv: list[str]) -> str | None:
    """The subcommand of a `sysmon-blt` command line (without the program name), or None."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


class AllocatorError(ValueError):
    """``SYSMON_BLT_ALLOCATOR`` names no usable library."""


def choose_allocator(setting: str | None, command: str | None = None,
                     candidates: tuple[str, ...] = JEMALLOC_CANDIDATES) -> str | None:
    """The jemalloc library to preload for ``setting`` (the variable's value) and ``command``
    (the subcommand about to run), or None for the system allocator."""
    value = (setting or "auto").strip()
    if value.lower() == "system":
        return None
    if value.lower() == "auto":
        if command not in LONG_RUNNING:
            return None
        return next((c for c in candidates if Path(c).is_file()), None)
    if not Path(value).is_file():
        raise AllocatorError(f"{ALLOCATOR_ENV}={value}: no such file (use 'auto', 'system' or "
                             "the path of a libjemalloc.so)")
    return value


def relaunch_env(environ: dict[str, str], library: str) -> dict[str, str] | None:
    """The environment to start again with ``library`` preloaded; None when this process runs
    with it already (started again, or preloaded by the caller), so nothing starts twice."""
    preload = environ.get("LD_PRELOAD", "")
    if (environ.get(ALLOCATOR_ACTIVE_ENV) or library in preload.split()
            or library in preload.split(":")):
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{library} {preload}".strip()
    env[ALLOCATOR_ACTIVE_ENV] = library
    return env


def active_allocator() -> str:
    """What this process allocates with, as logs and summaries report it."""
    library = os.environ.get(ALLOCATOR_ACTIVE_ENV)
    if library:
        return f"jemalloc ({library})"
    if "jemalloc" in os.environ.get("LD_PRELOAD", ""):
        return "jemalloc (LD_PRELOAD)"
    return "system"


def relaunch_with_allocator() -> int | None:
    """At an entry point, before the command runs: start this process again with the chosen
    jemalloc (this call then does not return), or return None to go on as it is, or 2 after a
    usage error about ``SYSMON_BLT_ALLOCATOR`` (printed)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        library = choose_allocator(os.environ.get(ALLOCATOR_ENV), command_of(sys.argv[1:]))
    except AllocatorError as exc:
        print(f"sysmon-blt: error: {exc}", file=sys.stderr)
        return 2
    env = relaunch_env(dict(os.environ), library) if library else None
    if env is not None and sys.executable and sys.orig_argv:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            # the interpreter's own command line: the installed script, or `python -m ...`
            os.execve(sys.executable, list(sys.orig_argv), env)
        except OSError as exc:  # cannot start again (a sandbox, a noexec mount): carry on as is
            print(f"sysmon-blt: warning: could not start with {library} ({exc}); using the "
                  "system allocator", file=sys.stderr)
    return None
