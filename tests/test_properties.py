"""Property tests: whatever JSON (or bytes) arrives, normalization either raises BadRecord or
returns NOT_SYSMON or a well-formed NormalizedEvent (never any other exception, never garbage)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import evtx_json, nxlog, sentinel, winlogbeat6, winlogbeat8
from plugin.normalize.event import event_key
from plugin.normalize.normalizer import NOT_SYSMON, NormalizedEvent, Normalizer
from plugin.normalize.schema import load_schemas
from plugin.normalize.shapes import BadRecord
from plugin.sources.base import RawRecord

NORMALIZER = Normalizer(load_schemas())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)


HEX32 = re.compile(r"[0-9a-f]{32}")
SHAPES = {"evtx", "xml", "winlogbeat8", "winlogbeat7", "winlogbeat6", "sentinel", "nxlog", "flat"}


def normalize(raw: bytes, position: int = 0):
    """NOT_SYSMON, a checked NormalizedEvent, or None for a dead letter (BadRecord)."""
    try:
        out = NORMALIZER(RawRecord("p", position, raw))
    except BadRecord:
        return None
    if out is NOT_SYSMON:
        return out
    assert isinstance(out, NormalizedEvent), type(out)
    assert_well_formed(out, raw, position)
    return out


def assert_well_formed(ev: NormalizedEvent, raw: bytes, position: int) -> None:
    assert isinstance(ev.event_key, str) and HEX32.fullmatch(ev.event_key), ev.event_key
    # the key is DESIGN.md's: over computer|channel|record_id|utc_time, else over the raw bytes
    assert ev.event_key == event_key(ev.computer, ev.channel, ev.record_id, ev.ts, raw)
    assert (ev.source, ev.position) == ("p", position)
    assert type(ev.event_id) is int and 0 <= ev.event_id <= 65535
    assert isinstance(ev.normalized, str) and ev.normalized
    assert ev.text_hash == hashlib.sha256(ev.normalized.encode()).hexdigest()[:32]
    assert ev.shape in SHAPES
    assert isinstance(orjson.loads(ev.fields), dict)
    assert ev.raw == raw.decode("utf-8", "replace")
    for v in (ev.computer, ev.user_name, ev.channel):
        assert v is None or isinstance(v, str)
    assert ev.record_id is None or type(ev.record_id) is int
    assert ev.ts is None or (isinstance(ev.ts, datetime) and ev.ts.utcoffset() == timezone.utc.utcoffset(None))


def check(doc) -> None:
    try:
        raw = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return
    out = normalize(raw)
    assert normalize(raw) == out  # deterministic: the same record, the same row


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_never_crashes(doc):
    check(doc)


TEMPLATES = [evtx_json(), nxlog(), winlogbeat8(), winlogbeat6(), sentinel()]


def test_the_templates_themselves_are_well_formed_events():
    for doc in TEMPLATES:
        out = normalize(orjson.dumps(doc), position=7)
        assert isinstance(out, NormalizedEvent), doc


SYSMON_KEYS = ["EventID", "Channel", "winlog", "event_data", "EventData", "Event", "UtcTime",
               "RecordNumber", "Hostname", "SourceName", "Provider"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(len(TEMPLATES))), st.sampled_from(SYSMON_KEYS), json_values)
def test_real_shapes_with_a_field_replaced_never_crash(i, key, value):
    doc = orjson.loads(orjson.dumps(TEMPLATES[i]))
    target = doc
    for nest in ("Event", "winlog"):
        if nest in doc and isinstance(doc[nest], dict) and key not in doc:
            target = doc[nest]
    target[key] = value
    check(doc)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw):
    normalize(raw)
