"""A throwaway PostgreSQL server for tests that need a real DuckLake catalog (no mocks).

The server binaries refuse to run as root, and tests here (and in CI) run as root: the data
folder belongs to the ``postgres`` user and every server command runs as that user. The server
listens on a free loopback port with trust authentication and its socket in its own folder,
so it touches nothing of the machine's own PostgreSQL and leaves nothing behind.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: where the PostgreSQL 15 server binaries live (Debian's layout); SBLT_TEST_PG_BIN overrides (not
#: SYSMON_BLT_*: the command line rejects unknown variables of its own prefix)
PG_BIN = Path(os.environ.get("SBLT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
#: how the temporary folders of these servers begin (`reap_stale` looks for them)
PREFIX = "sblt-pg-"


def unavailable() -> str | None:
    """Why no throwaway server can start here (a skip reason), or None when one can."""
    missing = [b for b in ("initdb", "pg_ctl", "pg_isready", "psql")
               if not (PG_BIN / b).is_file()]
    if missing:
        return f"PostgreSQL server binaries missing under {PG_BIN}: {', '.join(missing)}"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} user to run the PostgreSQL server as"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != PG_USER:
        return f"starting a server as {PG_USER!r} needs root (or running as {PG_USER!r})"
    return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed and not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def reap_stale(parent: Path | None = None) -> list[Path]:
    """Stop and remove the servers of test processes that died before their teardown (a test
    run killed by a timeout or a closed pipe): each server folder names its owner's pid, and
    a server whose owner is gone would otherwise run until the machine stops. The folders
    reaped."""
    parent = Path(parent or tempfile.gettempdir())
    reaped = []
    for owner in parent.glob(f"{PREFIX}*/owner.pid"):
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            continue
        server = PgServer(owner.parent)
        server._started = (server.data / "postmaster.pid").exists()
        server.stop()
        reaped.append(owner.parent)
        log.warning("pg_test_server_reaped", root=str(owner.parent), owner_pid=pid)
    return reaped


def free_port() -> int:
    """A loopback port nobody listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in a temporary folder; `stop` removes it all.

    ``create_database(name)`` returns a libpq connection string for a new, empty database:
    tests give each lake a database of its own, so they share one (slow to start) server.
    """

    def __init__(self, root: Path | None = None) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.root = Path(root or tempfile.mkdtemp(prefix=PREFIX))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = 0
        self._user = pwd.getpwnam(PG_USER)
        self._started = False

    # -- running commands as the server's user ------------------------------------------------
    def _as_postgres(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a server binary as ``postgres`` (root drops to it; ``postgres`` runs it as is)."""
        def drop() -> None:
            os.setgid(self._user.pw_gid)
            os.initgroups(PG_USER, self._user.pw_gid)
            os.setuid(self._user.pw_uid)

        as_root = os.geteuid() == 0
        env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": str(self.root), "LC_ALL": "C",
               "PGHOST": str(self.sock)}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=self.root, preexec_fn=drop if as_root else None)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def start(self) -> "PgServer":
        """initdb, then start on a free port and wait until it accepts connections (first
        reaping the servers of test processes that died without stopping theirs)."""
        reap_stale(self.root.parent)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.sock.mkdir(exist_ok=True)
        for p in (self.root, self.sock):
            os.chown(p, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.root, 0o755)
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                           "-U", PG_USER, "-E", "UTF8", "--no-sync"], timeout=120)
        last: Exception | None = None
        for _ in range(5):  # another process may take the free port before the server binds it
            self.port = free_port()
            try:
                self._pg_ctl_start()
            except RuntimeError as exc:
                last = exc
                continue
            log.info("pg_test_server_started", port=self.port, root=str(self.root))
            return self
        raise RuntimeError(f"PostgreSQL did not start: {last}; log: {self.log_tail()}")

    def _pg_ctl_start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.sock} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts,
                           "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"],
                          timeout=90)
        self._started = True
        self._wait_ready()

    def halt(self) -> None:
        """Stop the server and keep its data (an outage: clients' connections drop and new
        ones are refused); `resume` starts it again on the same port."""
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                           "-w", "-t", "30", "stop"], timeout=60)
        self._started = False

    def resume(self) -> None:
        self._pg_ctl_start()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._as_postgres([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1",
                                   "-p", str(self.port), "-U", PG_USER], timeout=10)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on port {self.port} not ready after "
                                       f"{timeout:.0f}s; log: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    # -- what tests use ------------------------------------------------------------------------
    def dsn(self, dbname: str) -> str:
        """The libpq connection string of ``dbname`` on this server."""
        return f"dbname={dbname} host=127.0.0.1 port={self.port} user={PG_USER}"

    def sql(self, dbname: str, statement: str) -> str:
        """Run one statement with psql (over TCP, as a client would); its output."""
        return self._as_postgres([str(PG_BIN / "psql"), "-X", "-q", "-t", "-A",
                                  "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                                  "-p", str(self.port), "-U", PG_USER, "-d", dbname,
                                  "-c", statement]).stdout.strip()

    def create_database(self, name: str) -> str:
        """A new, empty database ``name``; its libpq connection string
        (``dbname=... host=127.0.0.1 port=... user=postgres``)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        self.sql("postgres", f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: tests may leave connections open) and remove it."""
        if self._started:
            try:
                self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                   "-w", "-t", "30", "stop"], timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning("pg_test_server_stop_failed", error=str(exc)[:500])
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
