"""Shared fixtures: the real data folder (tests using it skip only when it is absent) and event
fixtures built in code, one underlying event rendered in every supported shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

requires_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent (outside this workplace)")

EVENT_DATA = {
    "RuleName": "technique_id=T1059,technique_name=Command-Line Interface",
    "UtcTime": "2024-03-05 10:11:12.345",
    "ProcessGuid": "{4a3f1c2d-1111-2222-3333-444455556666}",
    "ProcessId": "4242",
    "Image": "C:\\Windows\\System32\\cmd.exe",
    "FileVersion": "10.0.19041.1 (WinBuild.160101.0800)",
    "Description": "Windows Command Processor",
    "Product": "Microsoft Windows Operating System",
    "Company": "Microsoft Corporation",
    "OriginalFileName": "Cmd.Exe",
    "CommandLine": "cmd.exe /c whoami /all > C:\\Users\\alice\\AppData\\Local\\Temp\\out-2024-03-05 10:11:12.txt",
    "CurrentDirectory": "C:\\Users\\alice\\",
    "User": "CORP\\alice",
    "LogonGuid": "{4a3f1c2d-aaaa-bbbb-cccc-ddddeeeeffff}",
    "LogonId": "0x3E7F21",
    "TerminalSessionId": "1",
    "IntegrityLevel": "Medium",
    "Hashes": "SHA1=0123456789ABCDEF0123456789ABCDEF01234567,MD5=0123456789ABCDEF0123456789ABCDEF,"
              "SHA256=0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
    "ParentProcessGuid": "{4a3f1c2d-9999-8888-7777-666655554444}",
    "ParentProcessId": "1000",
    "ParentImage": "C:\\Windows\\explorer.exe",
    "ParentCommandLine": "C:\\Windows\\Explorer.EXE",
}
COMPUTER = "WS01.corp.example"
CHANNEL = "Microsoft-Windows-Sysmon/Operational"
RECORD_ID = 777


def evtx_json(data=EVENT_DATA, **system) -> dict:
    ints = {"ProcessId", "ParentProcessId", "TerminalSessionId"}
    ed = {k: (int(v) if k in ints else v) for k, v in data.items()}
    sys_part = {
        "Provider": {"#attributes": {"Name": "Microsoft-Windows-Sysmon",
                                     "Guid": "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}"}},
        "EventID": 1, "Version": 5, "Level": 4, "Task": 1, "Opcode": 0,
        "Keywords": "0x8000000000000000",
        "TimeCreated": {"#attributes": {"SystemTime": "2024-03-05T10:11:12.346123Z"}},
        "EventRecordID": RECORD_ID, "Correlation": None,
        "Execution": {"#attributes": {"ProcessID": 2284, "ThreadID": 5252}},
        "Channel": CHANNEL, "Computer": COMPUTER,
        "Security": {"#attributes": {"UserID": "S-1-5-18"}},
    }
    sys_part.update(system)
    return {"Event": {"#attributes": {"xmlns": "http://schemas.microsoft.com/win/2004/08/events/event"},
                      "System": sys_part, "EventData": ed}}


def nxlog(data=EVENT_DATA) -> dict:
    msg = "Process Create:\r\n" + "\r\n".join(f"{k}: {v}" for k, v in data.items())
    return {
        "EventTime": "2024-03-05 05:11:12", "EventReceivedTime": "2024-03-05 05:11:14",
        "Hostname": COMPUTER, "Keywords": -9223372036854775808, "EventType": "INFO",
        "SeverityValue": 2, "Severity": "INFO", "EventID": 1, "SourceName": "Microsoft-Windows-Sysmon",
        "ProviderGuid": "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}", "Version": 5, "Task": 1,
        "OpcodeValue": 0, "RecordNumber": RECORD_ID, "ProcessID": 2284, "ThreadID": 5252,
        "Channel": CHANNEL, "Domain": "NT AUTHORITY", "AccountName": "SYSTEM",
        "UserID": "S-1-5-18", "AccountType": "User", "Message": msg, "Opcode": "Info",
        "SourceModuleName": "eventlog", "SourceModuleType": "im_msvistalog", **data,
    }


def winlogbeat8(data=EVENT_DATA, code="1") -> dict:
    return {
        "@timestamp": "2024-03-05T10:11:15.000Z",
        "ecs": {"version": "8.0.0"},
        "event": {"code": code, "provider": "Microsoft-Windows-Sysmon", "kind": "event",
                  "created": "2024-03-05T10:11:15.500Z"},
        "winlog": {"channel": CHANNEL, "computer_name": COMPUTER, "event_id": code,
                   "record_id": RECORD_ID, "provider_name": "Microsoft-Windows-Sysmon",
                   "event_data": dict(data), "user": {"domain": "NT AUTHORITY", "name": "SYSTEM"}},
        "host": {"name": "ws01"}, "message": "Process Create: ...",
    }


def winlogbeat6(data=EVENT_DATA) -> dict:
    return {"@timestamp": "2024-03-05T10:11:15.000Z", "source_name": "Microsoft-Windows-Sysmon",
            "log_name": CHANNEL, "event_id": 1, "computer_name": COMPUTER,
            "record_number": str(RECORD_ID), "event_data": dict(data), "type": "wineventlog"}


def sentinel(data=EVENT_DATA, as_xml=False) -> dict:
    if as_xml:
        from xml.sax.saxutils import escape
        ed = "<DataItem><EventData>" + "".join(
            f'<Data Name="{k}">{escape(v)}</Data>' for k, v in data.items()) + "</EventData></DataItem>"
    else:
        ed = json.dumps(data)
    return {"TenantId": "t", "TimeGenerated": "2024-03-05T10:11:20.000Z",
            "Provider": "Microsoft-Windows-Sysmon", "Channel": CHANNEL, "Computer": COMPUTER,
            "EventID": 1, "EventRecordId": RECORD_ID, "EventData": ed, "Type": "WindowsEvent"}


def event_xml(data=EVENT_DATA) -> str:
    from xml.sax.saxutils import escape
    items = "".join(f"<Data Name='{k}'>{escape(v)}</Data>" for k, v in data.items())
    return (
        "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>"
        "<Provider Name='Microsoft-Windows-Sysmon' Guid='{5770385F-C22A-43E0-BF4C-06F5698FFBD9}'/>"
        "<EventID>1</EventID><Version>5</Version><Level>4</Level><Task>1</Task>"
        "<TimeCreated SystemTime='2024-03-05T10:11:12.346123Z'/>"
        f"<EventRecordID>{RECORD_ID}</EventRecordID><Channel>{CHANNEL}</Channel>"
        f"<Computer>{COMPUTER}</Computer><Security UserID='S-1-5-18'/></System>"
        f"<EventData>{items}</EventData></Event>"
    )


@pytest.fixture
def schemas():
    from plugin.normalize.schema import load_schemas

    return load_schemas()


@pytest.fixture
def text(schemas):
    from plugin.normalize.text import CanonicalText

    return CanonicalText(schemas)


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs():
    from plugin.logs import configure

    configure(0, "console")


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory):
    """Untrained, seeded micro models (the BLT and the Linformer shadow, with a BPE tokenizer
    learnt on simulated texts) saved as a model directory: fast pipeline tests."""
    import torch

    from models.blt_helpers import make_texts, micro_config
    from plugin.models.blt.model import BLT
    from plugin.models.bpe import save_bpe, train_bpe
    from plugin.models.checkpoint import save_blt
    from plugin.models.linformer import Linformer, LinformerConfig, save_linformer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("micro-model")
    blt = BLT(micro_config()).eval()
    save_blt(d, blt)
    save_bpe(d, train_bpe(make_texts(300), vocab_size=400))
    save_linformer(d, Linformer(LinformerConfig(vocab_size=400, dim=blt.dim, layers=1, heads=2,
                                                k=16, max_len=64)).eval())
    return d


@pytest.fixture(scope="session")
def imported_service_db(tmp_path_factory) -> Path:
    """A closed database of 1,500 imported simulated events (alerts grouped into incidents), for
    the service tests to copy: never opened for writing itself, so one import serves them all."""
    from plugin import simulate
    from plugin.cli import main

    d = tmp_path_factory.mktemp("service-db")
    src, db = d / "events.jsonl", d / "base.duckdb"
    simulate.write_jsonl(str(src), 1500, seed=5, anomaly_rate=0.05)
    assert main(["import", str(src), "--db", str(db), "-q"]) == 0
    return db


def make_service_app(store, **settings):
    """The service app over ``store`` with the shipped model, as `serve` builds it; ``settings``
    are config keys (service_token, service_report_dir, ...)."""
    from plugin.cli.stream import service_app
    from plugin.config import Config
    from plugin.pipeline.assemble import load_embedder
    from plugin.stream.metrics import StreamMetrics

    return service_app(store, Config(db=store.path, **settings), load_embedder(None),
                       StreamMetrics(needs_group=False))


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL 15 server for the whole session (tests/pg.py), shared because it
    takes a moment to start: ``pg_server.create_database(name)`` gives each test a catalog of
    its own and returns its libpq connection string. Skips, saying why, where no server can
    start (no server binaries, no ``postgres`` user, not root)."""
    yield from throwaway_pg()


def throwaway_pg():
    """A started PostgreSQL server, stopped and removed after (skips, saying why, where none
    can start); a generator for fixtures of any scope."""
    from pg import PgServer, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()
