"""The fleet's state: users, hosts, and each host's clock, record counter and live process table.

Why a module of its own: this is everything the simulation *remembers* between events. The
modules that decide what happens next (`programs`, `routine`, `scenarios`) and the one that
shapes Sysmon fields (`sysmon`) all read and update this state, so it sits below them and knows
none of them.

Determinism: the whole fleet shares one `random.Random(seed)`; the order in which state is drawn
from it (users first, then per host its identity followed by its boot) is part of the output.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from datetime import datetime, timedelta
from typing import Any, Callable, NamedTuple

from .catalog import (
    CHANNEL, DOMAIN, DOMAIN_FQDN, FIRST, HOST_ROLES, IMAGES, LAST, SYS32, Img, dll_resource,
)
from .event import SimEvent, label

__all__ = ["DllInfo", "Fleet", "Host", "Proc", "Thunk", "User"]

Thunk = Callable[[], SimEvent]
"""A queued follow-up event: built only when its turn comes, so it gets the host's clock then."""

_SERVICE_LOGON = {"NT AUTHORITY\\SYSTEM": "0x3e7", "NT AUTHORITY\\LOCAL SERVICE": "0x3e5",
                  "NT AUTHORITY\\NETWORK SERVICE": "0x3e4"}


class User:
    """An interactive domain user: account, SID and the logon it holds on its host."""

    __slots__ = ("name", "account", "sid", "logon_id", "logon_guid", "session")

    def __init__(self, name: str, sid: str) -> None:
        self.name = name
        self.account = f"{DOMAIN}\\{name}"
        self.sid = sid
        self.logon_id = ""
        self.logon_guid = ""
        self.session = "1"


class Proc:
    """A process in a host's table: identity, image, command line, owner and its parent."""

    __slots__ = ("guid", "pid", "img", "path", "cmd", "cwd", "user", "logon_guid", "logon_id",
                 "session", "integrity", "parent", "kind")

    def __init__(self, guid: str, pid: int, img: Img, path: str, cmd: str, cwd: str, user: str,
                 logon_guid: str, logon_id: str, session: str, integrity: str,
                 parent: Proc | None, kind: str) -> None:
        self.guid = guid
        self.pid = pid
        self.img = img
        self.path = path
        self.cmd = cmd
        self.cwd = cwd
        self.user = user
        self.logon_guid = logon_guid
        self.logon_id = logon_id
        self.session = session
        self.integrity = integrity
        self.parent = parent
        self.kind = kind  # "core" (never ends), "app" (long-lived user/service), "short"


class DllInfo(NamedTuple):
    """The image-load fields of one DLL (its version resource plus file hashes)."""

    path: str
    version: str
    desc: str
    product: str
    company: str
    orig: str
    hashes: str
    signer: str


class Fleet:
    """The domain: the shared random generator, every user, the hosts, file-hash caches.

    Users are all drawn up front; hosts are then added one at a time with `add_host`, because
    each host's boot draws from the shared generator before the next host's identity is drawn.
    """

    def __init__(self, seed: int, hosts: int, start: datetime) -> None:
        self.rng = rng = random.Random(seed)
        self.seed = seed
        self.start = start
        self._hash_cache: dict[str, str] = {}
        self._dll_cache: dict[str, DllInfo] = {}
        dom_sid = f"S-1-5-21-{rng.randrange(10**9, 4 * 10**9)}-{rng.randrange(10**9, 4 * 10**9)}-" \
                  f"{rng.randrange(10**8, 10**9)}"
        names: list[str] = []
        seen: set[str] = set()
        self.user_by_account: dict[str, User] = {}
        self._users_per_host: list[list[User]] = []
        for _ in range(hosts):
            us = []
            for s in range(rng.randint(2, 3)):
                while True:
                    nm = f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
                    if nm not in seen:
                        break
                    if len(seen) > len(FIRST) * len(LAST) // 2:
                        nm = f"{nm}{len(seen)}"
                        break
                seen.add(nm)
                names.append(nm)
                u = User(nm, f"{dom_sid}-{1100 + len(names)}")
                u.session = str(s + 1)
                us.append(u)
                self.user_by_account[u.account] = u
            self._users_per_host.append(us)
        self.hosts: list[Host] = []

    @property
    def size(self) -> int:
        """How many hosts the fleet has (added or not yet)."""
        return len(self._users_per_host)

    def add_host(self) -> Host:
        """Draw the next host's identity and its users' logons; the caller boots it next."""
        rng = self.rng
        i = len(self.hosts)
        us = self._users_per_host[i]
        hp = f"{(rng.getrandbits(20) << 12) | i:08X}"
        for u in us:
            lid = rng.randrange(0x100000, 0xFFFFFF)
            u.logon_id = f"0x{lid:x}"
            u.logon_guid = (f"{{{hp}-{rng.getrandbits(16):04X}-{rng.getrandbits(16):04X}-"
                            f"{lid & 0xFFFF:04X}-{lid >> 16:02X}0000000000}}")
        host = Host(self, i, us, hp)
        self.hosts.append(host)
        return host

    def hashes(self, path: str, cache: bool = True) -> str:
        """Sysmon's Hashes field: stable per path within a seed, or fresh (`cache=False`)."""
        hit = self._hash_cache.get(path) if cache else None
        if hit is not None:
            return hit
        basis = f"{self.seed}|{path.lower()}".encode() if cache else \
            self.rng.getrandbits(128).to_bytes(16, "big")
        h = (f"SHA1={hashlib.sha1(basis).hexdigest().upper()},"
             f"MD5={hashlib.md5(basis).hexdigest().upper()},"
             f"SHA256={hashlib.sha256(basis).hexdigest().upper()},"
             f"IMPHASH={hashlib.md5(basis + b'imp').hexdigest().upper()}")
        if cache:
            self._hash_cache[path] = h
        return h

    def dll_info(self, dll: str) -> DllInfo:
        """The image-load fields of a DLL by file name (cached: the same on every host)."""
        hit = self._dll_cache.get(dll)
        if hit is not None:
            return hit
        res = dll_resource(dll)
        info = DllInfo(res.path, res.version, res.desc, res.product, res.company, dll,
                       self.hashes(res.path), res.signer)
        self._dll_cache[dll] = info
        return info


class Host:
    """One simulated machine: its clock, record counter, live process tree and pending events.

    It holds state and the small helpers that read it (pick a user, a live process); what
    happens on the host is decided elsewhere. `pending` queues follow-up events (a process
    creation's image loads, its end...) that come out before any new activity.
    """

    # well-known processes, set by the boot (`programs.Programs.boot`)
    system: Proc
    services: Proc
    lsass: Proc
    msmpeng: Proc

    def __init__(self, sim: Fleet, idx: int, users: list[User], hostpart: str) -> None:
        rng = sim.rng
        self.sim = sim
        self.rng = rng
        self.idx = idx
        role = HOST_ROLES[idx % len(HOST_ROLES)]
        self.short = f"{role}-{idx // len(HOST_ROLES) + 1:02d}"
        self.fqdn = f"{self.short}.{DOMAIN_FQDN}"
        self.ip = f"10.10.{1 + idx // 200}.{20 + idx % 200}"
        self.hostpart = hostpart
        self.users = users
        self.sysmon_pid = 1800 + 4 * rng.randrange(0, 400)
        self.t_ms = rng.randrange(0, 2000)  # ms since the simulation start
        self.rid = rng.randrange(1000, 90000)
        self.guid_n = rng.randrange(0x1000, 0x9000)
        self.pending: deque[Thunk] = deque()
        self.alive: list[Proc] = []  # every process that may act (created and not ended)
        self.apps: list[Proc] = []   # long-lived processes that may end
        self.svc: dict[str, Proc] = {}
        self.explorer: dict[str, Proc] = {}
        self.utc_str = ""
        self.dt = sim.start
        self.booting = True  # until the boot chain is out, nothing else happens on this host

    # -------------------------------------------------------------- identity and time

    def guid(self) -> str:
        self.guid_n += 1
        t = self.t_ms // 1000 + 0x659000
        return (f"{{{self.hostpart}-{(t >> 16) & 0xFFFF:04X}-{t & 0xFFFF:04X}-"
                f"{self.rng.getrandbits(16):04X}-{self.guid_n:012X}}}")

    def pid(self) -> int:
        return 4 * self.rng.randrange(100, 5000)

    def set_clock(self) -> None:
        """Move the event clock (`dt`, Sysmon's `utc_str`) to the host's time `t_ms`."""
        dt = self.sim.start + timedelta(milliseconds=self.t_ms)
        self.dt = dt
        self.utc_str = (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} {dt.hour:02d}:"
                        f"{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}")

    def make(self, eid: int, fields: dict[str, str], lab: dict[str, Any] | None = None) -> SimEvent:
        """The next event of this host (next record id, current time; normal unless labelled)."""
        self.rid += 1
        return SimEvent(eid, self.fqdn, CHANNEL, self.rid, self.dt, fields,
                        lab or label(), self.sysmon_pid, self.ip)

    # -------------------------------------------------------------- process table

    def new_proc(self, key: str, parent: Proc | None, cmd: str, *, kind: str = "short",
                 user: User | None = None, integrity: str | None = None,
                 img: Img | None = None, cwd: str | None = None) -> Proc:
        """A process of image `IMAGES[key]` (or `img`), not yet in the table.

        Runs as `user`, else as the parent's interactive user, else as the parent's service
        account (SYSTEM by default). `{path}` in `cmd` becomes the image path.
        """
        img = img or IMAGES[key]
        if user is None and parent is not None and parent.session != "0":
            user = self.sim.user_by_account.get(parent.user)
        if user is not None:
            path = img.path.replace("{user}", user.name)
            return Proc(self.guid(), self.pid(), img, path, cmd.replace("{path}", path),
                        cwd or f"C:\\Users\\{user.name}\\", user.account, user.logon_guid,
                        user.logon_id, user.session, integrity or "Medium", parent, kind)
        acct = parent.user if parent is not None and parent.user.startswith("NT AUTHORITY") \
            else "NT AUTHORITY\\SYSTEM"
        lid = _SERVICE_LOGON.get(acct, "0x3e7")
        lv = int(lid, 16)
        lg = f"{{{self.hostpart}-0000-0000-{lv & 0xFF:02X}{lv >> 8:02X}-000000000000}}"
        return Proc(self.guid(), self.pid(), img, img.path, cmd.replace("{path}", img.path),
                    cwd or SYS32, acct, lg, lid, "0", integrity or "System", parent, kind)

    def track(self, p: Proc) -> None:
        """`p` was created: it may act from now on (and end, if it is an app)."""
        self.alive.append(p)
        if p.kind == "app":
            self.apps.append(p)

    def untrack(self, p: Proc) -> None:
        """`p` ended."""
        if p in self.alive:
            self.alive.remove(p)
        if p in self.apps:
            self.apps.remove(p)

    def push(self, fn: Thunk) -> None:
        """Queue a follow-up event."""
        self.pending.append(fn)

    # -------------------------------------------------------------- picking actors

    def user(self) -> User:
        return self.rng.choice(self.users)

    def user_proc(self) -> Proc:
        """A live process running as an interactive user (explorer at least)."""
        rng = self.rng
        cands = [p for p in self.apps if p.session != "0"]
        if cands and rng.random() < 0.6:
            return rng.choice(cands)
        return self.explorer[self.user().account]

    def any_proc(self) -> Proc:
        return self.rng.choice(self.alive)

    def owner(self, p: Proc) -> User:
        """The interactive user `p` runs as, else the host's first user."""
        return self.sim.user_by_account.get(p.user) or self.users[0]
