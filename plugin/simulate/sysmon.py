"""The Sysmon event types: which fields each one carries, in Sysmon's order, filled from host state.

Why a module of its own: the field layout of each event id is the part that has to match real
Sysmon (and what the normalizer and schemas are tested against). Keeping the layouts together, and
apart from the code that decides *when* an event happens, makes them reviewable side by side.
"""

from __future__ import annotations

from typing import Any

from .event import SimEvent
from .fleet import Host, Proc

__all__ = ["EventFactory"]

Label = dict[str, Any] | None


class EventFactory:
    """Builds one host's Sysmon events (ids 1, 3, 5, 7, 10, 11, 12/13, 22) at its current time.

    Process creation and termination also update the host's process table, so the table and
    the emitted stream never disagree.
    """

    __slots__ = ("host",)

    def __init__(self, host: Host) -> None:
        self.host = host

    def create(self, p: Proc, lab: Label = None, track: bool = True) -> SimEvent:
        """Event 1; `track=False` for a process that is never seen again (one-event anomalies)."""
        h = self.host
        pp = p.parent
        assert pp is not None  # only System has no parent, and it is never created
        img = p.img
        f = {
            "RuleName": "-", "UtcTime": h.utc_str, "ProcessGuid": p.guid, "ProcessId": str(p.pid),
            "Image": p.path, "FileVersion": img.version, "Description": img.desc,
            "Product": img.product, "Company": img.company, "OriginalFileName": img.orig,
            "CommandLine": p.cmd, "CurrentDirectory": p.cwd, "User": p.user,
            "LogonGuid": p.logon_guid, "LogonId": p.logon_id, "TerminalSessionId": p.session,
            "IntegrityLevel": p.integrity, "Hashes": h.sim.hashes(p.path),
            "ParentProcessGuid": pp.guid, "ParentProcessId": str(pp.pid), "ParentImage": pp.path,
            "ParentCommandLine": pp.cmd, "ParentUser": pp.user,
        }
        if track:
            h.track(p)
        return h.make(1, f, lab)

    def terminate(self, p: Proc) -> SimEvent:
        """Event 5."""
        h = self.host
        h.untrack(p)
        f = {"RuleName": "-", "UtcTime": h.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "User": p.user}
        return h.make(5, f)

    def image_load(self, p: Proc, dll: str, lab: Label = None) -> SimEvent:
        """Event 7 of a known DLL (by file name)."""
        h = self.host
        path, ver, desc, prod, comp, orig, hashes, signer = h.sim.dll_info(dll)
        f = {"RuleName": "-", "UtcTime": h.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "ImageLoaded": path, "FileVersion": ver,
             "Description": desc, "Product": prod, "Company": comp, "OriginalFileName": orig,
             "Hashes": hashes, "Signed": "true", "Signature": signer, "SignatureStatus": "Valid",
             "User": p.user}
        return h.make(7, f, lab)

    def foreign_image_load(self, p: Proc, path: str, version: str, desc: str, product: str,
                           company: str, orig: str, lab: Label = None) -> SimEvent:
        """Event 7 of a DLL outside the catalogue (fresh hashes: never seen before)."""
        h = self.host
        f = {"RuleName": "-", "UtcTime": h.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "ImageLoaded": path,
             "FileVersion": version, "Description": desc, "Product": product, "Company": company,
             "OriginalFileName": orig, "Hashes": h.sim.hashes(path, cache=False), "Signed": "true",
             "Signature": company, "SignatureStatus": "Valid", "User": p.user}
        return h.make(7, f, lab)

    def registry(self, p: Proc, eid: int, etype: str, target: str, details: str | None,
                 lab: Label = None) -> SimEvent:
        """Event 12 (key created/deleted) or 13 (value set, with `details`)."""
        h = self.host
        f = {"RuleName": "-", "EventType": etype, "UtcTime": h.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "TargetObject": target}
        if eid == 13:
            f["Details"] = details or "-"
        f["User"] = p.user
        return h.make(eid, f, lab)

    def dns(self, p: Proc, name: str, ip: str, lab: Label = None) -> SimEvent:
        """Event 22, one IPv4 answer."""
        h = self.host
        f = {"RuleName": "-", "UtcTime": h.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "QueryName": name, "QueryStatus": "0",
             "QueryResults": f"::ffff:{ip};", "Image": p.path, "User": p.user}
        return h.make(22, f, lab)

    def network(self, p: Proc, dip: str, dport: int, pname: str, dhost: str = "-",
                proto: str = "tcp", lab: Label = None) -> SimEvent:
        """Event 3, an outbound connection from the host (random ephemeral source port)."""
        h = self.host
        f = {"RuleName": "-", "UtcTime": h.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "User": p.user, "Protocol": proto,
             "Initiated": "true", "SourceIsIpv6": "false", "SourceIp": h.ip,
             "SourceHostname": h.fqdn, "SourcePort": str(h.rng.randrange(49152, 65535)),
             "SourcePortName": "-", "DestinationIsIpv6": "false", "DestinationIp": dip,
             "DestinationHostname": dhost, "DestinationPort": str(dport),
             "DestinationPortName": pname}
        return h.make(3, f, lab)

    def file_create(self, p: Proc, target: str, lab: Label = None) -> SimEvent:
        """Event 11."""
        h = self.host
        f = {"RuleName": "-", "UtcTime": h.utc_str, "ProcessGuid": p.guid,
             "ProcessId": str(p.pid), "Image": p.path, "TargetFilename": target,
             "CreationUtcTime": h.utc_str, "User": p.user}
        return h.make(11, f, lab)

    def process_access(self, src: Proc, tgt: Proc, access: str, trace: str,
                       lab: Label = None) -> SimEvent:
        """Event 10, `src` opening `tgt` with `access` rights."""
        h = self.host
        f = {"RuleName": "-", "UtcTime": h.utc_str, "SourceProcessGUID": src.guid,
             "SourceProcessId": str(src.pid), "SourceThreadId": str(4 * h.rng.randrange(50, 4000)),
             "SourceImage": src.path, "TargetProcessGUID": tgt.guid,
             "TargetProcessId": str(tgt.pid), "TargetImage": tgt.path, "GrantedAccess": access,
             "CallTrace": trace, "SourceUser": src.user, "TargetUser": tgt.user}
        return h.make(10, f, lab)
