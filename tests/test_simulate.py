"""The fleet simulator: determinism, identity, labels, process trees, shapes, normalizer fit."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from plugin import simulate
from plugin.normalize import schema, shapes, text
from plugin.simulate import LABEL_KEY, SimEvent, generate, render, simulate_records, write_jsonl

GUID_RE = re.compile(r"^\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}$")
UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$")


@pytest.fixture(scope="module")
def events() -> list[SimEvent]:
    return list(generate(20_000, seed=7, anomaly_rate=0.02))


def _sig(ev: SimEvent) -> tuple:
    return (ev.event_id, ev.computer, ev.record_id, ev.utc_time, tuple(ev.fields.items()),
            tuple(sorted(ev.label.items())))


def test_deterministic_per_seed():
    a = [_sig(e) for e in generate(3000, seed=11)]
    b = [_sig(e) for e in generate(3000, seed=11)]
    c = [_sig(e) for e in generate(3000, seed=12)]
    assert a == b
    assert a != c
    ra = [orjson.dumps(r) for r in simulate_records(500, seed=5, shape="mixed")]
    rb = [orjson.dumps(r) for r in simulate_records(500, seed=5, shape="mixed")]
    assert ra == rb


def test_identity_distinct_and_monotonic(events):
    keys = {(e.computer, e.record_id) for e in events}
    times = {(e.computer, e.utc_time) for e in events}
    assert len(keys) == len(events)
    assert len(times) == len(events)
    last: dict[str, tuple[int, datetime]] = {}
    for e in events:
        assert e.utc_time.tzinfo is not None and e.utc_time.microsecond % 1000 == 0
        assert e.channel == simulate.CHANNEL and e.computer.endswith(".corp.example")
        if e.computer in last:
            rid, t = last[e.computer]
            assert e.record_id == rid + 1
            assert (e.utc_time - t).total_seconds() >= 0.001
        last[e.computer] = (e.record_id, e.utc_time)
    assert len(last) == 8


def test_event_mix_and_fields(events):
    counts = Counter(e.event_id for e in events)
    assert set(counts) >= {1, 3, 5, 7, 10, 11, 12, 13, 22}
    assert counts[7] == max(counts.values())
    assert counts[12] + counts[13] > counts[1]
    for e in events[:3000]:
        f = e.fields
        assert f["RuleName"] == "-"
        assert UTC_RE.match(f["UtcTime"])
        assert f["UtcTime"] == e.utc_time.strftime("%Y-%m-%d %H:%M:%S.") + f"{e.utc_time.microsecond // 1000:03d}"
        assert all(isinstance(v, str) for v in f.values())
        if e.event_id == 1:
            for k in ("ProcessGuid", "ParentProcessGuid", "LogonGuid"):
                assert GUID_RE.match(f[k]), (k, f[k])
            assert f["LogonId"].startswith("0x")
            assert re.match(r"^SHA1=[0-9A-F]{40},MD5=[0-9A-F]{32},SHA256=[0-9A-F]{64},IMPHASH=[0-9A-F]{32}$",
                            f["Hashes"])
            assert "\\" in f["User"] and f["IntegrityLevel"] in ("System", "High", "Medium", "Low")
        elif e.event_id == 10:
            assert {"SourceProcessGUID", "TargetProcessGUID", "GrantedAccess", "CallTrace"} <= set(f)
        elif e.event_id == 3:
            assert {"SourceIp", "SourcePort", "DestinationIp", "DestinationPort", "Protocol",
                    "Initiated"} <= set(f)


def test_parent_guids_exist(events):
    seen: dict[str, set[str]] = {}
    system_parents = 0
    for e in events:
        guids = seen.setdefault(e.computer, set())
        f = e.fields
        if e.event_id == 1:
            if f["ParentImage"] == "System":
                system_parents += 1
            else:
                assert f["ParentProcessGuid"] in guids, f
            guids.add(f["ProcessGuid"])
        elif e.event_id == 10:
            assert f["SourceProcessGUID"] in guids and f["TargetProcessGUID"] in guids
        elif "ProcessGuid" in f:
            assert f["ProcessGuid"] in guids, (e.event_id, f)
    assert system_parents == 8  # one smss.exe per host boot


def test_parent_chains_realistic(events):
    pairs = {(e.fields["ParentImage"].rsplit("\\", 1)[-1].lower(), e.fields["Image"].rsplit("\\", 1)[-1].lower())
             for e in events if e.event_id == 1 and e.label["scenario"] == "normal"}
    assert ("services.exe", "svchost.exe") in pairs
    assert ("explorer.exe", "chrome.exe") in pairs
    assert ("explorer.exe", "outlook.exe") in pairs
    assert ("cmd.exe", "conhost.exe") in pairs or ("powershell.exe", "conhost.exe") in pairs
    assert ("winword.exe", "cmd.exe") not in pairs  # only as an injected anomaly


def test_anomaly_share_and_labels(events):
    n_anom = sum(e.label["anomaly"] for e in events)
    assert abs(n_anom / len(events) - 0.02) < 0.006
    scen = Counter(e.label["scenario"] for e in events)
    assert set(simulate.ANOMALY_SCENARIOS) <= set(scen)
    assert 0.01 < scen["novel"] / len(events) < 0.03
    for e in events:
        lab = e.label
        assert set(lab) == {"anomaly", "scenario", "span"}
        if lab["anomaly"]:
            assert lab["span"] in e.fields.values()
        else:
            assert lab["span"] is None and lab["scenario"] in ("normal", "novel")
    by = {e.label["scenario"]: e for e in events if e.label["anomaly"]}
    assert " -enc " in by["encoded_powershell"].fields["CommandLine"]
    assert by["lsass_access"].fields["GrantedAccess"] == "0x1010"
    assert by["lsass_access"].fields["TargetImage"].lower().endswith("lsass.exe")
    assert "comsvcs.dll, MiniDump" in by["comsvcs_minidump"].fields["CommandLine"]
    assert "-urlcache" in by["certutil_download"].fields["CommandLine"]
    assert by["winword_cmd"].fields["ParentImage"].endswith("WINWORD.EXE")
    assert "\\CurrentVersion\\Run\\" in by["runkey_persistence"].fields["TargetObject"]
    assert by["rare_beacon"].event_id == 3


def test_zero_anomaly_rate():
    assert not any(e.label["anomaly"] for e in generate(3000, seed=1, anomaly_rate=0.0))


def test_lazy():
    t = time.perf_counter()
    ev = next(generate(10**12, seed=3))
    assert isinstance(ev, SimEvent)
    assert time.perf_counter() - t < 1.0
    assert next(iter(simulate_records(10**12, shape="nxlog")))


def test_start_and_hosts():
    start = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    evs = list(generate(500, seed=1, hosts=3, start=start))
    assert len({e.computer for e in evs}) == 3
    assert min(e.utc_time for e in evs) >= start
    assert list(generate(0)) == []
    with pytest.raises(ValueError):
        generate(10, anomaly_rate=1.5)


REQUIRED = {
    "winlogbeat8": ["@timestamp", "ecs.version", "event.code", "event.provider", "event.kind",
                    "event.created", "winlog.channel", "winlog.computer_name", "winlog.event_id",
                    "winlog.record_id", "winlog.provider_name", "winlog.provider_guid",
                    "winlog.process.pid", "winlog.process.thread.id", "winlog.user.identifier",
                    "winlog.event_data", "winlog.opcode", "winlog.task", "winlog.version",
                    "host.name", "agent.type", "agent.version", "message"],
    "nxlog": ["SourceModuleType", "SourceModuleName", "SourceName", "Channel", "Hostname",
              "EventTime", "EventReceivedTime", "RecordNumber", "EventID", "ProviderGuid", "Domain",
              "AccountName", "UserID", "EventType", "Severity", "Message"],
    "evtxjson": ["Event.#attributes.xmlns", "Event.System.Provider.#attributes.Name",
                 "Event.System.EventID", "Event.System.TimeCreated.#attributes.SystemTime",
                 "Event.System.EventRecordID", "Event.System.Execution.#attributes.ProcessID",
                 "Event.System.Channel", "Event.System.Computer",
                 "Event.System.Security.#attributes.UserID", "Event.EventData"],
}


def _get(doc: dict, dotted: str):
    cur = doc
    for part in dotted.split("."):
        assert isinstance(cur, dict) and part in cur, dotted
        cur = cur[part]
    return cur


@pytest.mark.parametrize("shape", ["winlogbeat8", "nxlog", "evtxjson"])
def test_shape_required_keys(events, shape):
    for ev in events[:400]:
        rec = render(ev, shape)
        for key in REQUIRED[shape]:
            _get(rec, key)
        assert rec[LABEL_KEY] == ev.label
        orjson.loads(orjson.dumps(rec))
    ev = next(e for e in events if e.event_id == 1)
    rec = render(ev, shape)
    if shape == "winlogbeat8":
        assert rec["winlog"]["event_id"] == "1" and rec["event"]["code"] == "1"
        assert rec["winlog"]["event_data"] == ev.fields
        assert rec["message"].startswith("Process Create:\r\nRuleName: -\r\n")
        assert rec["@timestamp"] > ev.utc_time.strftime("%Y-%m-%dT%H:%M:%S")
        assert rec["host"]["name"] == ev.computer.split(".")[0]
    elif shape == "nxlog":
        assert rec["SourceModuleType"] == "im_msvistalog" and rec["EventType"] == "INFO"
        assert rec["RecordNumber"] == ev.record_id and rec["EventID"] == 1
        assert rec["CommandLine"] == ev.fields["CommandLine"]
        local = (ev.utc_time - timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S")
        assert rec["EventTime"] == local  # NXLog EventTime: local time (UTC-5), no zone
    else:
        data = rec["Event"]["EventData"]
        assert isinstance(data["ProcessId"], int) and isinstance(data["ParentProcessId"], int)
        assert isinstance(data["TerminalSessionId"], int) and isinstance(data["CommandLine"], str)
        assert rec["Event"]["System"]["EventRecordID"] == ev.record_id
        assert rec["Event"]["System"]["TimeCreated"]["#attributes"]["SystemTime"].startswith(
            ev.utc_time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ev.utc_time.microsecond // 1000:03d}")


def test_nxlog_registry_event_type(events):
    ev = next(e for e in events if e.event_id == 13)
    assert render(ev, "nxlog")["EventType"] == "SetValue"


def test_mixed_and_bad_shape():
    recs = list(simulate_records(400, seed=2, shape="mixed"))
    kinds = Counter("winlog" in r for r in recs)
    assert kinds[True] > 100 and kinds[False] > 100
    assert all(LABEL_KEY in r for r in recs)
    with pytest.raises(ValueError):
        list(simulate_records(3, shape="splunk"))


def test_write_jsonl(tmp_path, monkeypatch):
    out = tmp_path / "sim.jsonl"
    assert write_jsonl(out, 1234, seed=4, shape="evtxjson") == 1234
    lines = out.read_bytes().splitlines()
    assert len(lines) == 1234
    assert all(LABEL_KEY in orjson.loads(line) for line in lines)
    buf = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buf))
    assert write_jsonl("-", 10, seed=4) == 10
    sys.stdout.flush()
    assert len(buf.getvalue().splitlines()) == 10
    assert write_jsonl(tmp_path / "empty.jsonl", 0) == 0


def test_produce_kafka_unreachable_broker_names_it():
    with pytest.raises(RuntimeError, match="127.0.0.1:1"):
        simulate.produce_kafka("127.0.0.1:1", "t", 3, producer_config={"message.timeout.ms": 1500},
                               seed=1)


def test_canonical_text_same_across_shapes():
    ct = text.CanonicalText(schema.load_schemas())
    seen_eids = set()
    for ev in generate(3000, seed=9, anomaly_rate=0.05):
        texts = set()
        for shape in ("winlogbeat8", "nxlog", "evtxjson"):
            rec = render(ev, shape)
            mapped = shapes.parse_and_map(orjson.dumps(rec))
            assert mapped is not None
            assert mapped.event_id == ev.event_id and mapped.computer == ev.computer
            assert mapped.record_id == ev.record_id and mapped.utc_time == ev.utc_time
            t = ct.build(mapped)
            assert LABEL_KEY not in t and "scenario" not in t and "'anomaly'" not in t
            texts.add(t)
        assert len(texts) == 1, (ev.event_id, texts)
        seen_eids.add(ev.event_id)
    assert seen_eids >= {1, 3, 5, 7, 10, 11, 12, 13, 22}


# sha256 of `simulate_records(300, seed=3, shape="mixed")` as JSON lines, computed with the
# single-module simulator before it was split into a package. Any change to what a seed produces
# (an extra random draw, a reordered field) changes it: if the change is intended, say so in the
# commit and update the hash; otherwise it is a regression.
GOLDEN_SEED3_MIXED_300 = "22372884060e5bb0ca52be331b3ce43e08381cadb7b2127eb115c9b166fc0688"


def test_output_matches_golden_hash(tmp_path):
    h = hashlib.sha256()
    for rec in simulate_records(300, seed=3, shape="mixed"):
        h.update(orjson.dumps(rec) + b"\n")
    assert h.hexdigest() == GOLDEN_SEED3_MIXED_300
    out = tmp_path / "golden.jsonl"
    assert write_jsonl(out, 300, seed=3, shape="mixed") == 300
    assert hashlib.sha256(out.read_bytes()).hexdigest() == GOLDEN_SEED3_MIXED_300
