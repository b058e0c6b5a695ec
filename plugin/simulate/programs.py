"""Process launches: the boot chain and the programs users, services and tasks start.

Why a module of its own: a process creation is never one event. It comes with image loads, child
processes, and usually its end, queued in order on the host. This module owns those multi-event
sequences and the realistic parent chains (smss > wininit > services > svchost, explorer > chrome,
Schedule > taskhostw > ...), so the rest of the simulator can ask for "a launch" in one call.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .catalog import BASE_DLLS, CHROME_DIR, DOCS, IMAGES, SVC_GROUPS, SYS32
from .fleet import Host, Proc, User
from .sysmon import EventFactory

__all__ = ["Programs"]


class Programs:
    """Queues process trees on one host: at boot, and later as user, service and task launches."""

    __slots__ = ("host", "ev", "rng")

    def __init__(self, host: Host, ev: EventFactory) -> None:
        self.host = host
        self.ev = ev
        self.rng = host.rng

    # -------------------------------------------------------------- building blocks

    def spawn(self, key: str, parent: Proc, cmd: str, *, kind: str = "short", loads: int = 2,
              **kw: Any) -> Proc:
        """Queue a process creation and a few of its image loads; the caller queues its end."""
        p = self.host.new_proc(key, parent, cmd, kind=kind, **kw)
        self.host.push(lambda: self.ev.create(p))
        self.queue_loads(p, loads)
        return p

    def queue_loads(self, p: Proc, k: int) -> None:
        """Queue `k` image loads of `p`: mostly its own DLLs, otherwise base system DLLs."""
        rng = self.rng
        pool = p.img.dlls
        for _ in range(k):
            dll = rng.choice(pool) if pool and rng.random() < 0.6 else rng.choice(BASE_DLLS)
            self.host.push(partial(self.ev.image_load, p, dll))

    def end(self, p: Proc) -> None:
        """Queue the termination of `p`."""
        self.host.push(lambda: self.ev.terminate(p))

    # -------------------------------------------------------------- boot

    def boot(self) -> None:
        """Queue the host's boot: session manager, services, svchost groups, user logons."""
        h = self.host
        rng = self.rng
        system = Proc(f"{{{h.hostpart}-0000-0000-0000-000000000001}}", 4, IMAGES["smss"], "System",
                      "", "", "NT AUTHORITY\\SYSTEM", "", "0x3e7", "0", "System", None, "core")
        h.system = system
        smss = self.spawn("smss", system, "\\SystemRoot\\System32\\smss.exe", kind="core", loads=0)
        self.spawn("csrss", smss, "%SystemRoot%\\system32\\csrss.exe ObjectDirectory=\\Windows "
                   "SharedSection=1024,20480,768 Windows=On SubSystemType=Windows "
                   "ServerDll=basesrv,1 ServerDll=winsrv:UserServerDllInitialization,3 "
                   "ServerDll=sxssrv,4 ProfileControl=Off MaxRequestThreads=16", kind="core", loads=0)
        wininit = self.spawn("wininit", smss, "wininit.exe", kind="core", loads=0)
        winlogon = self.spawn("winlogon", smss, "winlogon.exe", kind="core", loads=1)
        services = self.spawn("services", wininit, "C:\\Windows\\system32\\services.exe", kind="core",
                              loads=1)
        h.services = services
        h.lsass = self.spawn("lsass", wininit, "C:\\Windows\\system32\\lsass.exe", kind="core",
                             loads=1)
        for grp in SVC_GROUPS:
            acct = None
            if "NetworkService" in grp:
                acct = "NT AUTHORITY\\NETWORK SERVICE"
            elif "LocalService" in grp:
                acct = "NT AUTHORITY\\LOCAL SERVICE"
            p = h.new_proc("svchost", services, f"C:\\Windows\\system32\\svchost.exe {grp}",
                           kind="core")
            if acct:
                p.user = acct
                p.logon_id = "0x3e4" if "NETWORK" in acct else "0x3e5"
            h.push(partial(self.ev.create, p))
            self.queue_loads(p, 1)
            h.svc[grp.split()[1] if "-s" not in grp else grp.rsplit(" ", 1)[-1]] = p
        self.spawn("spoolsv", services, "C:\\Windows\\System32\\spoolsv.exe", kind="core", loads=1)
        h.msmpeng = self.spawn("msmpeng", services, '"' + IMAGES["msmpeng"].path + '"',
                               kind="core", loads=2)
        for u in h.users:
            ui = self.spawn("userinit", winlogon, "C:\\Windows\\system32\\userinit.exe", user=u,
                            loads=0)
            ex = self.spawn("explorer", ui, "C:\\Windows\\Explorer.EXE", kind="core", user=u,
                            loads=2, cwd=SYS32)
            h.explorer[u.account] = ex
            self.end(ui)
            if rng.random() < 0.7:
                self.spawn("onedrive", ex, '"{path}" /background', kind="app", loads=1)

    # -------------------------------------------------------------- later launches

    def launch(self) -> None:
        """Queue one launch: a user program, a short service, a DCOM server or a scheduled task."""
        h = self.host
        rng = self.rng
        r = rng.random()
        if r < 0.40:
            u = h.user()
            ex = h.explorer[u.account]
            k = rng.random()
            if len(h.apps) > 40:  # keep the pool bounded: end an app instead
                p = rng.choice(h.apps)
                self.end(p)
            elif k < 0.30:
                ch = self.spawn("chrome", ex, '"{path}"', kind="app", loads=3)
                for _ in range(rng.randint(1, 3)):
                    self.spawn("chrome", ch, '"{path}" --type=renderer --display-capture-permissions-'
                               "policy-allowed --lang=en-US --device-scale-factor=1 "
                               f"--num-raster-threads=4 --renderer-client-id={rng.randint(5, 400)} "
                               "--mojo-platform-channel-handle=" + str(rng.randint(1000, 9999)) +
                               " /prefetch:1", kind="app", loads=1, cwd=CHROME_DIR)
            elif k < 0.45:
                self.spawn("outlook", ex, '"{path}"', kind="app", loads=3)
            elif k < 0.62:
                doc = rng.choice(DOCS)
                key = "excel" if doc.endswith("xlsx") else "winword"
                self.spawn(key, ex, f'"{{path}}" /n "C:\\Users\\{u.name}\\Documents\\{doc}"',
                           kind="app", loads=3)
            elif k < 0.70:
                self.spawn("teams", ex, '"{path}" --process-start-type=autostart', kind="app",
                           loads=2)
            elif k < 0.80:
                p = self.spawn("notepad", ex, f'"{{path}}" C:\\Users\\{u.name}\\Documents\\notes.txt',
                               loads=1)
                self.end(p)
            else:
                self.shell(ex, u)
        elif r < 0.55:
            grp = rng.choice(("-k netsvcs -p -s Appinfo", "-k LocalService -p -s fdPHost",
                              "-k netsvcs -p -s BITS", "-k LocalSystemNetworkRestricted -p -s TrkWks"))
            p = self.spawn("svchost", h.services, f"C:\\Windows\\system32\\svchost.exe {grp}",
                           loads=2)
            self.end(p)
        elif r < 0.75:
            dcom = h.svc["DcomLaunch"]
            k = rng.random()
            if k < 0.5:
                p = self.spawn("wmiprvse", dcom, "C:\\Windows\\system32\\wbem\\wmiprvse.exe "
                               "-secured -Embedding", loads=2, cwd=SYS32)
            elif k < 0.8:
                u = h.user()
                p = self.spawn("runtimebroker", dcom, "C:\\Windows\\System32\\RuntimeBroker.exe "
                               "-Embedding", loads=1, user=u, cwd=SYS32)
            else:
                p = self.spawn("searchprot", dcom, '"C:\\Windows\\system32\\SearchProtocolHost.exe" '
                               "Global\\UsGthrFltPipeMssGthrPipe1_ Global\\UsGthrCtrlFltPipeMssGthrPipe1 "
                               '1 -2147483646 "Software\\Microsoft\\Windows Search" '
                               '"Mozilla/4.0 (compatible; MSIE 6.0; Windows NT; MS Search 4.0 Robot)" '
                               '"C:\\ProgramData\\Microsoft\\Search\\Data\\Temp\\usgthrsvc" "DownLevelDaemon"',
                               loads=1, cwd=SYS32)
            self.end(p)
        else:
            self.scheduled_task()

    def shell(self, ex: Proc, u: User) -> None:
        """An interactive cmd or PowerShell with its console host and one to three commands."""
        rng = self.rng
        kids: tuple[tuple[str, str], ...]
        if rng.random() < 0.6:
            sh = self.spawn("cmd", ex, '"C:\\Windows\\system32\\cmd.exe" ', loads=1)
            kids = (("ipconfig", "ipconfig  /all"), ("ping", "ping  -n 4 10.10.0.5"),
                    ("net", "net  use"), ("git", '"{path}" status'), ("python", '"{path}" -m pip list'),
                    ("gpupdate", "gpupdate  /force"))
        else:
            sh = self.spawn("powershell", ex, '"{path}" ', loads=3)
            kids = (("git", '"{path}" pull'), ("python", '"{path}" build.py'),
                    ("ipconfig", '"{path}" /flushdns'), ("ping", '"{path}" github.com'))
        ch = self.spawn("conhost", sh, "\\??\\C:\\Windows\\system32\\conhost.exe 0xffffffff -ForceV1",
                        loads=0)
        for _ in range(rng.randint(1, 3)):
            key, cmd = rng.choice(kids)
            k = self.spawn(key, sh, cmd, loads=1, cwd=f"C:\\Users\\{u.name}\\")
            self.end(k)
        self.end(ch)
        self.end(sh)

    def scheduled_task(self) -> None:
        """A task host started by the Schedule service, running one maintenance program."""
        h = self.host
        rng = self.rng
        sched = h.svc["Schedule"]
        if rng.random() < 0.5:
            cmd = ("taskhostw.exe -RegisterDevice -ProtectionStateChanged -FreeNetworkOnly"
                   if rng.random() < 0.3 else "taskhostw.exe")
            taskhost = self.spawn("taskhostw", sched, cmd, loads=1)
        else:
            taskhost = self.spawn("taskeng", sched, f"taskeng.exe {h.guid()} S-1-5-18:NT AUTHORITY\\"
                                  "System:Service:", loads=1)
        k = rng.random()
        if k < 0.3:
            t = self.spawn("gupdate", taskhost, '"{path}" /ua /installsource scheduler', loads=2)
        elif k < 0.5:
            t = self.spawn("defrag", taskhost, "C:\\Windows\\system32\\defrag.exe -c -h -o -$", loads=1)
        elif k < 0.75:
            t = self.spawn("mpcmdrun", taskhost, '"{path}" -IdleTask -TaskName WdCacheMaintenance',
                           loads=1)
        else:
            t = self.spawn("cmd", taskhost, 'C:\\Windows\\system32\\cmd.exe /c '
                           '"C:\\ProgramData\\Scripts\\nightly_backup.cmd"', loads=1,
                           cwd="C:\\ProgramData\\Scripts\\")
            c = self.spawn("conhost", t, "\\??\\C:\\Windows\\system32\\conhost.exe 0xffffffff -ForceV1",
                           loads=0)
            h.push(lambda: self.ev.file_create(t, "C:\\ProgramData\\Scripts\\logs\\backup.log"))
            self.end(c)
        self.end(t)
        self.end(taskhost)
