"""Property tests: normalization never raises anything but BadRecord, whatever JSON arrives."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import evtx_json, nxlog, sentinel, winlogbeat6, winlogbeat8
from plugin.normalize.normalizer import Normalizer
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


def check(doc) -> None:
    try:
        raw = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return
    try:
        NORMALIZER(RawRecord("p", 0, raw))
    except BadRecord:
        pass


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_never_crashes(doc):
    check(doc)


TEMPLATES = [evtx_json(), nxlog(), winlogbeat8(), winlogbeat6(), sentinel()]
SYSMON_KEYS = ["EventID", "Channel", "winlog", "event_data", "EventData", "Event", "UtcTime",
               "RecordNumber", "Hostname", "SourceName", "Provider"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(TEMPLATES))), st.sampled_from(SYSMON_KEYS), json_values)
def test_real_shapes_with_a_field_replaced_never_crash(i, key, value):
    doc = orjson.loads(orjson.dumps(TEMPLATES[i]))
    target = doc
    for nest in ("Event", "winlog"):
        if nest in doc and isinstance(doc[nest], dict) and key not in doc:
            target = doc[nest]
    target[key] = value
    check(doc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw):
    try:
        NORMALIZER(RawRecord("p", 0, raw))
    except BadRecord:
        pass
