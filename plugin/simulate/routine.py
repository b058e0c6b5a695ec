"""Ordinary fleet behaviour: what a host does next when nothing is queued.

Why a module of its own: this is the baseline an anomaly detector learns, so its mix (mostly
image loads and registry writes, then network, files, process access, launches) is tuned here,
in one place, apart from process launching (`programs`) and from injected anomalies (`scenarios`).
"""

from __future__ import annotations

from .catalog import DOCS, DOMAIN_FQDN, SITES
from .event import SimEvent
from .fleet import Host, Thunk
from .programs import Programs
from .sysmon import EventFactory

__all__ = ["Routine"]


class Routine:
    """Draws one host's next burst of normal activity and hands out its events one at a time."""

    __slots__ = ("host", "ev", "programs", "rng")

    def __init__(self, host: Host, ev: EventFactory, programs: Programs) -> None:
        self.host = host
        self.ev = ev
        self.programs = programs
        self.rng = host.rng

    def step(self) -> SimEvent:
        """The host's next event: a queued follow-up, else the first of a new burst."""
        h = self.host
        if not h.pending:
            self.activity()
        ev = h.pending.popleft()()
        if h.booting and not h.pending:
            h.booting = False
        return ev

    def activity(self) -> None:
        """Queue one burst of normal activity."""
        h = self.host
        rng = self.rng
        r = rng.random()
        if r < 0.36:
            p = h.any_proc()
            self.programs.queue_loads(p, rng.randint(1, 3))
        elif r < 0.68:
            for _ in range(rng.randint(1, 3)):
                h.push(self.registry())
        elif r < 0.82:
            self.network()
        elif r < 0.89:
            h.push(self.file())
        elif r < 0.94:
            h.push(self.access())
        elif r < 0.955 and len(h.apps) > 3:
            p = rng.choice(h.apps)
            self.programs.end(p)
        else:
            self.programs.launch()

    def registry(self) -> Thunk:
        """A registry write by a user program (Explorer, Office state) or a service (BAM,
        time, Defender)."""
        h = self.host
        ev = self.ev
        rng = self.rng
        if rng.random() < 0.5:
            p = h.user_proc()
            sid = h.owner(p).sid
            k = rng.random()
            if k < 0.3:
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\UserAssist\\"
                     "{CEBFF5CD-ACE2-4F4F-9178-9926F41749EA}\\Count\\"
                     + rng.choice(("HRZR_PGYFRFFVBA", "{1NP14R77-02R7-4R5Q-O744-2RO1NR5198O7}\\abgrcnq.rkr",
                                   "Zvpebfbsg.Jvaqbjf.Rkcybere")))
                return lambda: ev.registry(p, 13, "SetValue", t, "Binary Data")
            if k < 0.5:
                ext = rng.choice((".docx", ".xlsx", ".txt", "Folder"))
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RecentDocs\\"
                     f"{ext}\\{rng.randint(0, 20)}")
                return lambda: ev.registry(p, 13, "SetValue", t, "Binary Data")
            if k < 0.7:
                app = rng.choice(("Microsoft.Windows.Explorer", "Microsoft.Office.WINWORD.EXE.15",
                                  "Chrome", "Microsoft.Office.OUTLOOK.EXE.15"))
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\FeatureUsage\\"
                     f"AppSwitched\\{app}")
                d = f"DWORD (0x{rng.randint(1, 300):08x})"
                return lambda: ev.registry(p, 13, "SetValue", t, d)
            if k < 0.85:
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Office\\16.0\\Word\\Reading Locations\\"
                     f"Document {rng.randint(0, 9)}")
                et = rng.choice(("CreateKey", "DeleteKey"))
                return lambda: ev.registry(p, 12, et, t, None)
            zone = rng.choice(("ProxyBypass", "IntranetName", "AutoDetect"))
            t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\\"
                 f"ZoneMap\\{zone}")
            return lambda: ev.registry(p, 13, "SetValue", t, "DWORD (0x00000001)")
        k = rng.random()
        if k < 0.35:
            p = h.svc.get("BITS") or h.services
            u = h.user()
            prog = rng.choice(("notepad.exe", "cmd.exe", "WindowsPowerShell\\v1.0\\powershell.exe",
                               "SearchApp.exe", "taskhostw.exe"))
            t = (f"HKLM\\System\\CurrentControlSet\\Services\\bam\\State\\UserSettings\\{u.sid}\\"
                 f"\\Device\\HarddiskVolume3\\Windows\\System32\\{prog}")
            return lambda: ev.registry(p, 13, "SetValue", t, "Binary Data")
        if k < 0.55:
            p = h.svc.get("LocalService") or h.services
            t = "HKLM\\System\\CurrentControlSet\\Services\\W32Time\\Config\\LastKnownGoodTime"
            d = f"QWORD (0x01da{rng.getrandbits(16):04x}-0x{rng.getrandbits(32):08x})"
            return lambda: ev.registry(p, 13, "SetValue", t, d)
        if k < 0.75:
            p = h.msmpeng
            t = rng.choice((
                "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Diagnostics\\LastKnownGoodPlatformLocation",
                "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Signature Updates\\SignaturesLastUpdated",
                "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Reporting\\LastRtpScanTime"))
            d = f"QWORD (0x01da{rng.getrandbits(16):04x}-0x{rng.getrandbits(32):08x})"
            return lambda: ev.registry(p, 13, "SetValue", t, d)
        if k < 0.9:
            p = h.svc.get("Schedule") or h.services
            task = rng.choice(("Microsoft\\Windows\\UpdateOrchestrator\\Schedule Scan",
                               "Microsoft\\Windows\\Defrag\\ScheduledDefrag",
                               "GoogleUpdateTaskMachineUA"))
            t = ("HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Schedule\\TaskCache\\Tree\\"
                 f"{task}\\Index")
            return lambda: ev.registry(p, 13, "SetValue", t, "DWORD (0x00000003)")
        p = h.svc.get("LocalService") or h.services
        t = "HKLM\\System\\CurrentControlSet\\Services\\W32Time\\SecureTimeLimits\\RunTime"
        et = rng.choice(("CreateKey", "DeleteKey"))
        return lambda: ev.registry(p, 12, et, t, None)

    def network(self) -> None:
        """Queue a connection (often after its DNS query): web, domain controller or update."""
        h = self.host
        ev = self.ev
        rng = self.rng
        if rng.random() < 0.6:
            p = h.user_proc()
            site, pat = rng.choice(SITES)
            ip = pat.format(a=rng.randint(1, 250), b=rng.randint(1, 250))
            if rng.random() < 0.6:
                h.push(lambda: ev.dns(p, site, ip))
            h.push(lambda: ev.network(p, ip, 443, "https"))
            return
        k = rng.random()
        if k < 0.6:
            p = h.lsass if rng.random() < 0.4 else (h.svc.get("gpsvc") or h.services)
            port, name = rng.choice(((389, "ldap"), (88, "kerberos"), (445, "microsoft-ds"),
                                     (135, "epmap")))
            h.push(lambda: ev.dns(p, f"dc01.{DOMAIN_FQDN}", "10.10.0.5"))
            h.push(lambda: ev.network(p, "10.10.0.5", port, name, f"dc01.{DOMAIN_FQDN}"))
        else:
            p = h.svc.get("wuauserv") or h.msmpeng
            ip = f"20.{rng.randint(40, 200)}.{rng.randint(1, 250)}.{rng.randint(1, 250)}"
            h.push(lambda: ev.dns(p, "fe3cr.delivery.mp.microsoft.com", ip))
            h.push(lambda: ev.network(p, ip, 443, "https"))

    def file(self) -> Thunk:
        """A file creation: user temp/download/cache files, prefetch, Defender scan history."""
        h = self.host
        rng = self.rng
        if rng.random() < 0.6:
            p = h.user_proc()
            base = f"C:\\Users\\{h.owner(p).name}\\"
            k = rng.random()
            if k < 0.3:
                t = base + f"AppData\\Local\\Temp\\~DF{rng.getrandbits(32):08X}.TMP"
            elif k < 0.55:
                t = base + f"Downloads\\{rng.choice(DOCS)}"
            elif k < 0.8:
                t = base + f"AppData\\Local\\Microsoft\\Windows\\INetCache\\Content.Outlook\\" \
                           f"{rng.getrandbits(32):08X}\\{rng.choice(DOCS)}"
            else:
                t = base + f"AppData\\Roaming\\Microsoft\\Windows\\Recent\\{rng.choice(DOCS)}.lnk"
        else:
            k = rng.random()
            if k < 0.5:
                p = h.svc.get("SysMain") or h.services
                prog = rng.choice(("CHROME.EXE", "SVCHOST.EXE", "WINWORD.EXE", "CONHOST.EXE", "CMD.EXE"))
                t = f"C:\\Windows\\Prefetch\\{prog}-{rng.getrandbits(32):08X}.pf"
            else:
                p = h.msmpeng
                t = ("C:\\ProgramData\\Microsoft\\Windows Defender\\Scans\\History\\CacheManager\\"
                     f"{rng.getrandbits(32):08X}-{rng.randint(0, 9)}.bin")
        ev = self.ev
        return lambda: ev.file_create(p, t)

    def access(self) -> Thunk:
        """A benign process access: Defender scanning, WMI querying lsass, a user program."""
        h = self.host
        rng = self.rng
        k = rng.random()
        if k < 0.5:
            src, tgt = h.msmpeng, h.any_proc()
            acc = rng.choice(("0x1000", "0x101000", "0x1400"))
        elif k < 0.8:
            src, tgt = (h.svc.get("Winmgmt") or h.services), h.lsass
            acc = rng.choice(("0x1000", "0x1400"))
        else:
            src, tgt = h.user_proc(), h.any_proc()
            acc = "0x1000"
        trace = (f"C:\\Windows\\SYSTEM32\\ntdll.dll+9d4c4|C:\\Windows\\System32\\KERNELBASE.dll+2c13e|"
                 f"{src.path}+{rng.getrandbits(20):x}")
        ev = self.ev
        return lambda: ev.process_access(src, tgt, acc, trace)
