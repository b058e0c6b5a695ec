"""Shape detection, canonical text and identity, on fixtures built in code."""

from __future__ import annotations

import hashlib
import re

import orjson
import pytest

from conftest import (CHANNEL, COMPUTER, EVENT_DATA, RECORD_ID, event_xml, evtx_json, nxlog,
                      sentinel, winlogbeat6, winlogbeat8)
from plugin.normalize.event import event_key, parse_utc
from plugin.normalize.normalizer import NOT_SYSMON, Normalizer
from plugin.normalize.shapes import BadRecord, map_document, parse_and_map
from plugin.sources.base import RawRecord

SHAPES = {
    "evtx": evtx_json(),
    "nxlog": nxlog(),
    "winlogbeat8": winlogbeat8(),
    "winlogbeat8_int_code": winlogbeat8(code=1),
    "winlogbeat6": winlogbeat6(),
    "sentinel_json": sentinel(),
    "sentinel_xml": sentinel(as_xml=True),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_shape_maps_to_the_same_event(name):
    ev = map_document(SHAPES[name])
    assert ev is not None
    assert ev.event_id == 1
    assert ev.computer == COMPUTER
    assert ev.channel == CHANNEL
    assert ev.record_id == RECORD_ID
    assert ev.utc_time == parse_utc("2024-03-05 10:11:12.345")
    assert ev.fields["RuleName"] == EVENT_DATA["RuleName"]
    assert ev.user == "CORP\\alice"


def test_raw_xml_shape():
    ev = parse_and_map(event_xml().encode())
    assert ev is not None and ev.shape == "xml"
    assert ev.record_id == RECORD_ID and ev.fields["Image"] == EVENT_DATA["Image"]


def test_canonical_text_identical_across_shapes(text):
    docs = dict(SHAPES, xml=event_xml())
    texts = {name: text.build(map_document(doc)) for name, doc in docs.items()}
    assert len(set(texts.values())) == 1, texts
    # and the key: same event, same identity, whatever the shape
    keys = {name: map_document(doc).key(b"unused") for name, doc in docs.items()}
    assert len(set(keys.values())) == 1, keys


def test_canonical_text_strips_noise_and_keeps_signal(text):
    t = text.build(map_document(evtx_json()))
    assert t.startswith("eid=1 ")
    assert "image=c:\\windows\\system32\\cmd.exe" in t
    assert "whoami /all" in t
    for noise in ("4a3f1c2d", "4242", "technique_id", "0123456789", "2024-03-05", "alice",
                  "ws01", "corp\\", "10.0.19041"):
        assert noise not in t.lower(), noise
    assert "<user>" in t and "<time>" in t


def test_new_host_or_user_alone_does_not_change_the_text(text):
    base = text.build(map_document(evtx_json()))
    data = dict(EVENT_DATA, User="OTHERDOM\\bob",
                CommandLine=EVENT_DATA["CommandLine"].replace("alice", "bob"),
                CurrentDirectory="C:\\Users\\bob\\")
    other = text.build(map_document(evtx_json(data, Computer="SRV99.other.example")))
    assert base == other


def test_side_fields_and_rulename_stay_out_of_text(text):
    doc = winlogbeat8()
    doc["winlog"]["event_data"]["sysmon_blt_sim"] = "ANOMALY-LABEL"
    doc["sysmon_blt_sim"] = {"anomaly": True}
    ev = map_document(doc)
    t = text.build(ev)
    assert "anomaly" not in t and "technique" not in t
    assert ev.fields["RuleName"].startswith("technique_id")


def test_field_names_match_case_insensitively(text):
    a = {"UtcTime": "2024-03-05 10:11:12.345", "SourceProcessGUID": "{4a3f1c2d-1111-2222-3333-444455556666}",
         "SourceImage": "C:\\a.exe", "TargetImage": "C:\\Windows\\System32\\lsass.exe",
         "GrantedAccess": "0x1010"}
    b = {k.upper() if k != "UtcTime" else k: v for k, v in a.items()}
    ta = text.build(map_document(winlogbeat8(a, code="10")))
    tb = text.build(map_document(winlogbeat8(b, code="10")))
    assert ta == tb and "grantedaccess=0x1010" in ta and "targetimage=" in ta


def test_key_uses_utctime_then_system_time_never_ingest_time():
    ev = map_document(evtx_json())
    expected = hashlib.sha256(
        f"{COMPUTER.lower()}|{CHANNEL}|{RECORD_ID}|2024-03-05T10:11:12.345Z".encode()).hexdigest()[:32]
    assert ev.key(b"x") == expected
    data = {k: v for k, v in EVENT_DATA.items() if k != "UtcTime"}
    ev2 = map_document(evtx_json(data))
    assert ev2.utc_time == parse_utc("2024-03-05T10:11:12.346123Z")  # System TimeCreated
    ev3 = map_document(nxlog(data))  # NXLog EventTime is local time: never used
    assert ev3.utc_time is None
    assert ev3.key(b"raw bytes") == hashlib.sha256(b"raw bytes").hexdigest()[:32]


def test_flat_json_without_record_number_keys_on_raw_bytes():
    doc = nxlog()
    del doc["RecordNumber"], doc["SourceModuleType"], doc["EventTime"]
    raw = orjson.dumps(doc)
    ev = parse_and_map(raw)
    assert ev.shape == "flat" and ev.record_id is None
    assert ev.key(raw) == event_key(None, None, None, None, raw)


def test_nxlog_registry_eventtype_recovered_from_message(text):
    data = {"UtcTime": "2024-03-05 10:11:12.345", "EventType": "SetValue",
            "Image": "C:\\Windows\\regedit.exe", "TargetObject": "HKLM\\Software\\Run\\x",
            "Details": "C:\\evil.exe"}
    doc = nxlog(data)
    doc["EventID"] = 13
    doc["EventType"] = "INFO"  # NXLog's own EventType overwrote Sysmon's
    t = text.build(map_document(doc))
    assert "eventtype=setvalue" in t
    assert t == text.build(map_document(winlogbeat8(data, code="13")))


def test_non_sysmon_is_skipped_not_dead_lettered(schemas):
    n = Normalizer(schemas)
    sec = evtx_json()
    sec["Event"]["System"]["Provider"] = {"#attributes": {"Name": "Microsoft-Windows-Security-Auditing"}}
    sec["Event"]["System"]["Channel"] = "Security"
    assert n(RawRecord("f", 0, orjson.dumps(sec))) is NOT_SYSMON
    assert n(RawRecord("f", 1, b'{"EventID": 4624, "Channel": "Security", "SourceName": "x"}')) is NOT_SYSMON


@pytest.mark.parametrize("raw,reason", [
    (b'{"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational"', "invalid JSON"),
    (b"[1, 2, 3]", "not an object"),
    (b'"just a string"', "not an event object"),
    (b'{"Event": {"EventData": {"Image": "x"}}}', "no System part"),
    (b'{"Event": {"System": {"Channel": "Microsoft-Windows-Sysmon/Operational", "EventID": "abc"}}}',
     "no valid EventID"),
    (b"<Event><System>", "invalid event XML"),
    (b'{"EventData": "{not json", "Provider": "Microsoft-Windows-Sysmon", "EventID": 1}', "not valid JSON"),
])
def test_malformed_records_raise_badrecord_with_reason(schemas, raw, reason):
    with pytest.raises(BadRecord, match=reason):
        Normalizer(schemas)(RawRecord("f", 0, raw))


def test_mask_tokens_cover_guid_time_hex(text):
    data = dict(EVENT_DATA, CommandLine="x.exe {12345678-1234-1234-1234-123456789abc} 2024-01-01T00:00:00Z "
                + "ab" * 20 + " S-1-5-21-1111111111-2222222222-3333333333-1001")
    t = text.build(map_document(evtx_json(data)))
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", t)
    assert not re.search(r"\d{4}-\d{2}-\d{2}", t)
    assert not re.search(r"[0-9a-f]{32}", t)
    assert "<guid>" in t and "<time>" in t and "<hex>" in t and "<sid>" in t


def test_text_is_deterministic(text):
    from plugin.normalize.schema import load_schemas
    from plugin.normalize.text import CanonicalText

    doc = evtx_json()
    assert text.build(map_document(doc)) == CanonicalText(load_schemas()).build(map_document(doc))


def test_the_masked_value_cache_stays_in_its_bound_and_changes_no_text(schemas):
    """A consumer bounds the normalizer's cache (`stream_cache_texts`); texts are the same."""
    from plugin.normalize.text import CanonicalText

    small, roomy = CanonicalText(schemas, cache_entries=8), CanonicalText(schemas)
    for i in range(40):
        doc = evtx_json(dict(EVENT_DATA, CommandLine=f"tool{i}.exe /x {i % 3}"))
        assert small.build(map_document(doc)) == roomy.build(map_document(doc))
        assert len(small._cache) <= 8
