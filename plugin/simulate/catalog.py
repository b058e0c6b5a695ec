"""The static world of the simulated fleet: programs, DLLs, service groups, documents, sites, names.

Why a module of its own: these tables are data, not behaviour. Keeping them apart from the code
that draws from them makes it possible to extend the fleet (a new program, a new site) without
reading the simulation logic, and keeps every other module short. Nothing here draws random
numbers except `syllables`, which only consumes the generator it is given.
"""

from __future__ import annotations

import random
from typing import NamedTuple

__all__ = [
    "BASE_DLLS", "CHANNEL", "CHROME", "CHROME_DIR", "DLL_DESC", "DOCS", "DOMAIN", "DOMAIN_FQDN",
    "FIRST", "GUI_DLLS", "HOST_ROLES", "IMAGES", "LAST", "MS_CO", "MS_PROD", "NET_DLLS", "OFFICE",
    "PS_DLLS", "SITES", "SVC_GROUPS", "SYLL", "SYS32", "WIN_VER", "DllResource", "Img",
    "dll_resource", "syllables",
]

CHANNEL = "Microsoft-Windows-Sysmon/Operational"
DOMAIN_FQDN = "corp.example"
DOMAIN = "CORP"

SYS32 = "C:\\Windows\\System32\\"
MS_CO = "Microsoft Corporation"
MS_PROD = "Microsoft\u00ae Windows\u00ae Operating System"
WIN_VER = "10.0.19041.3636 (WinBuild.160101.0800)"


class Img:
    """A program: path, version resource, original file name and the DLLs it typically loads.

    `path` may contain `{user}` (per-user installs), filled in when a process is created.
    """

    __slots__ = ("path", "name", "desc", "product", "company", "version", "orig", "dlls")

    def __init__(self, path: str, desc: str, orig: str | None = None, *, product: str = MS_PROD,
                 company: str = MS_CO, version: str = WIN_VER, dlls: tuple[str, ...] = ()) -> None:
        self.path = path
        self.name = path.rsplit("\\", 1)[-1]
        self.desc = desc
        self.product = product
        self.company = company
        self.version = version
        self.orig = orig or self.name
        self.dlls = dlls


BASE_DLLS = ("ntdll.dll", "kernel32.dll", "KernelBase.dll", "advapi32.dll", "msvcrt.dll",
             "sechost.dll", "rpcrt4.dll", "ucrtbase.dll", "combase.dll", "bcryptprimitives.dll")
GUI_DLLS = ("user32.dll", "win32u.dll", "gdi32.dll", "gdi32full.dll", "imm32.dll", "shell32.dll",
            "ole32.dll", "oleaut32.dll", "uxtheme.dll", "dwmapi.dll", "windows.storage.dll",
            "shlwapi.dll", "SHCore.dll", "msctf.dll", "propsys.dll")
NET_DLLS = ("ws2_32.dll", "mswsock.dll", "dnsapi.dll", "IPHLPAPI.DLL", "winhttp.dll",
            "wininet.dll", "crypt32.dll", "ncrypt.dll", "schannel.dll", "rasadhlp.dll",
            "FWPUCLNT.DLL", "secur32.dll", "sspicli.dll")
PS_DLLS = ("mscoree.dll", "mscoreei.dll", "clr.dll", "clrjit.dll", "amsi.dll",
           "System.Management.Automation.ni.dll", "mscorlib.ni.dll", "System.ni.dll",
           "System.Core.ni.dll", "MpOav.dll")
DLL_DESC: dict[str, str] = {
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

CHROME = "C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe"
OFFICE = "C:\\Program Files\\Microsoft Office\\root\\Office16\\"
CHROME_DIR = "C:\\Program Files\\Google\\Chrome\\Application\\120.0.6099.130\\"  # renderer cwd
IMAGES: dict[str, Img] = {
    "smss": Img(SYS32 + "smss.exe", "Windows Session Manager"),
    "csrss": Img(SYS32 + "csrss.exe", "Client Server Runtime Process"),
    "wininit": Img(SYS32 + "wininit.exe", "Windows Start-Up Application"),
    "winlogon": Img(SYS32 + "winlogon.exe", "Windows Logon Application"),
    "services": Img(SYS32 + "services.exe", "Services and Controller app"),
    "lsass": Img(SYS32 + "lsass.exe", "Local Security Authority Process"),
    "svchost": Img(SYS32 + "svchost.exe", "Host Process for Windows Services", dlls=NET_DLLS),
    "spoolsv": Img(SYS32 + "spoolsv.exe", "Spooler SubSystem App"),
    "msmpeng": Img("C:\\ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.23110.3-0\\MsMpEng.exe",
                    "Antimalware Service Executable", product="Microsoft\u00ae Windows\u00ae Operating System",
                    version="4.18.23110.3 (WinBuild.160101.0800)"),
    "userinit": Img(SYS32 + "userinit.exe", "Userinit Logon Application"),
    "explorer": Img("C:\\Windows\\explorer.exe", "Windows Explorer", dlls=GUI_DLLS),
    "taskhostw": Img(SYS32 + "taskhostw.exe", "Host Process for Windows Tasks"),
    "taskeng": Img(SYS32 + "taskeng.exe", "Task Scheduler Engine"),
    "wmiprvse": Img(SYS32 + "wbem\\WmiPrvSE.exe", "WMI Provider Host", "Wmiprvse.exe"),
    "runtimebroker": Img(SYS32 + "RuntimeBroker.exe", "Runtime Broker"),
    "searchprot": Img(SYS32 + "SearchProtocolHost.exe", "Microsoft Windows Search Protocol Host"),
    "conhost": Img(SYS32 + "conhost.exe", "Console Window Host", "CONHOST.EXE"),
    "cmd": Img(SYS32 + "cmd.exe", "Windows Command Processor", "Cmd.Exe"),
    "powershell": Img(SYS32 + "WindowsPowerShell\\v1.0\\powershell.exe", "Windows PowerShell",
                       "PowerShell.EXE", version="10.0.19041.3570 (WinBuild.160101.0800)", dlls=PS_DLLS),
    "chrome": Img(CHROME, "Google Chrome", product="Google Chrome", company="Google LLC",
                   version="120.0.6099.130", dlls=NET_DLLS + ("chrome_elf.dll", "chrome.dll")),
    "outlook": Img(OFFICE + "OUTLOOK.EXE", "Microsoft Outlook", "Outlook.exe",
                    product="Microsoft Outlook", version="16.0.17126.20132",
                    dlls=NET_DLLS + ("OLMAPI32.DLL", "mso.dll", "mso20win32client.dll")),
    "winword": Img(OFFICE + "WINWORD.EXE", "Microsoft Word", "WinWord.exe",
                    product="Microsoft Office", version="16.0.17126.20132",
                    dlls=("mso.dll", "wwlib.dll", "mso20win32client.dll", "VBE7.DLL")),
    "excel": Img(OFFICE + "EXCEL.EXE", "Microsoft Excel", "Excel.exe",
                  product="Microsoft Office", version="16.0.17126.20132",
                  dlls=("mso.dll", "mso20win32client.dll", "VBE7.DLL")),
    "notepad": Img(SYS32 + "notepad.exe", "Notepad", "NOTEPAD.EXE"),
    "teams": Img("C:\\Users\\{user}\\AppData\\Local\\Microsoft\\Teams\\current\\Teams.exe",
                  "Microsoft Teams", product="Microsoft Teams", version="1.6.00.33567",
                  dlls=NET_DLLS),
    "ipconfig": Img(SYS32 + "ipconfig.exe", "IP Configuration Utility", "ipconfig.exe"),
    "ping": Img(SYS32 + "PING.EXE", "TCP/IP Ping Command", "ping.exe"),
    "net": Img(SYS32 + "net.exe", "Net Command", "net.exe"),
    "gpupdate": Img(SYS32 + "gpupdate.exe", "Microsoft\u00ae Group Policy Update Utility", "GPUpdate.exe"),
    "git": Img("C:\\Program Files\\Git\\cmd\\git.exe", "Git for Windows", product="Git",
                company="The Git Development Community", version="2.43.0.windows.1"),
    "python": Img("C:\\Program Files\\Python311\\python.exe", "Python", product="Python",
                   company="Python Software Foundation", version="3.11.7"),
    "gupdate": Img("C:\\Program Files (x86)\\Google\\Update\\GoogleUpdate.exe", "Google Installer",
                    product="Google Update", company="Google LLC", version="1.3.36.352"),
    "defrag": Img(SYS32 + "Defrag.exe", "Disk Defragmenter Module", "Defrag.EXE"),
    "mpcmdrun": Img("C:\\ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.23110.3-0\\MpCmdRun.exe",
                     "Microsoft Malware Protection Command Line Utility", "MpCmdRun.exe",
                     version="4.18.23110.3 (WinBuild.160101.0800)"),
    "onedrive": Img("C:\\Users\\{user}\\AppData\\Local\\Microsoft\\OneDrive\\OneDrive.exe",
                     "Microsoft OneDrive", product="Microsoft OneDrive", version="23.246.1127.0002",
                     dlls=NET_DLLS),
    "rundll32": Img(SYS32 + "rundll32.exe", "Windows host process (Rundll32)", "RUNDLL32.EXE"),
    "certutil": Img(SYS32 + "certutil.exe", "CertUtil.exe", "CertUtil.exe"),
    "whoami": Img(SYS32 + "whoami.exe", "whoami - displays logged on user information", "whoami.exe"),
}


class DllResource(NamedTuple):
    """Where a DLL lives and what its version resource and signature say."""

    path: str
    version: str
    desc: str
    product: str
    company: str
    signer: str


def dll_resource(dll: str) -> DllResource:
    """The install location, version resource and signer of `dll` (a file name, e.g. `clr.dll`)."""
    signer, comp, prod, ver = "Microsoft Windows", MS_CO, MS_PROD, WIN_VER
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
        path = OFFICE + dll
        signer, prod, ver = "Microsoft Corporation", "Microsoft Office", "16.0.17126.20132"
    elif dll == "MpOav.dll":
        path = "C:\\ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.23110.3-0\\MpOav.dll"
    elif dll in ("clr.dll", "clrjit.dll", "mscoreei.dll"):
        path = f"C:\\Windows\\Microsoft.NET\\Framework64\\v4.0.30319\\{dll}"
        signer, prod, ver = "Microsoft Corporation", "Microsoft\u00ae .NET Framework", "4.8.9181.0"
    else:
        path = SYS32 + dll
    return DllResource(path, ver, DLL_DESC.get(dll, dll.rsplit(".", 1)[0]), prod, comp, signer)


SVC_GROUPS = (
    "-k DcomLaunch -p", "-k RPCSS -p", "-k LocalServiceNetworkRestricted -p -s lmhosts",
    "-k netsvcs -p -s Schedule", "-k netsvcs -p -s Winmgmt", "-k LocalService -p -s EventSystem",
    "-k NetworkService -p -s Dnscache", "-k netsvcs -p -s gpsvc", "-k LocalSystemNetworkRestricted -p -s SysMain",
    "-k netsvcs -p -s BITS", "-k wusvcs -p -s WaaSMedicSvc", "-k NetworkService -p -s CryptSvc",
    "-k LocalServiceNoNetwork -p", "-k netsvcs -p -s wuauserv", "-k appmodel -p -s StateRepository",
    "-k LocalServiceNetworkRestricted -p -s EventLog", "-k UnistackSvcGroup",
)

DOCS = ("Q3 report.docx", "budget_2026.xlsx", "meeting notes.docx", "onboarding checklist.docx",
        "invoice_4471.xlsx", "roadmap draft.docx", "travel expenses.xlsx", "contract_review.docx")
SITES = (
    ("www.google.com", "142.250.{a}.{b}"), ("outlook.office365.com", "52.96.{a}.{b}"),
    ("login.microsoftonline.com", "20.190.{a}.{b}"), ("teams.microsoft.com", "52.113.{a}.{b}"),
    ("www.bing.com", "13.107.21.{b}"), ("github.com", "140.82.{a}.{b}"),
    ("update.googleapis.com", "142.250.{a}.{b}"), ("ctldl.windowsupdate.com", "93.184.{a}.{b}"),
    ("settings-win.data.microsoft.com", "20.42.{a}.{b}"), ("www.wikipedia.org", "185.15.59.{b}"),
    ("slack.com", "3.{a}.{b}.10"), ("onedrive.live.com", "13.107.42.{b}"),
)
SYLL = ("al", "be", "cor", "da", "en", "fi", "gra", "hal", "ix", "jo", "ka", "lum", "mer",
        "no", "or", "pax", "qu", "ra", "sol", "tri", "ul", "vex", "wil", "xen", "yo", "zen")
FIRST = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "nina", "oscar", "peggy", "rupert", "sybil", "trent", "ursula", "victor",
         "wendy", "yusuf", "zoe", "liam", "emma")
LAST = ("smith", "jones", "miller", "davis", "garcia", "brown", "wilson", "moore", "taylor",
        "lee", "martin", "clark", "lewis", "walker", "hall", "young")
HOST_ROLES = ("WS-FIN", "WS-HR", "WS-ENG", "WS-SALES", "WS-OPS", "WS-MKT", "WS-IT", "WS-LEG")


def syllables(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    """A made-up word of `lo`..`hi` syllables (vendor, product, file and persistence names)."""
    return "".join(rng.choice(SYLL) for _ in range(rng.randint(lo, hi)))
