"""Process lineage by ParentProcessGuid, and the one GUID spelling every process join uses."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import orjson
import pytest

from plugin.detect.lineage import ProcessIndex, guid

ZERO = "{00000000-0000-0000-0000-000000000000}"
TS = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def creation(key: str, proc: str, parent: str, image: str):
    fields = {"ProcessGuid": proc, "ParentProcessGuid": parent, "Image": image, "CommandLine": image}
    return SimpleNamespace(event_id=1, fields=orjson.dumps(fields).decode(), event_key=key, ts=TS)


def test_lineage_walks_parents_nearest_first():
    idx = ProcessIndex()
    idx.add([creation("k1", "{A1}", "{A0}", "explorer.exe"), creation("k2", "{a2}", "{A1}", "cmd.exe")])
    chain = idx.lineage_of(orjson.dumps({"ProcessGuid": "{A3}", "ParentProcessGuid": " {A2} "}).decode())
    assert [p["image"] for p in chain] == ["cmd.exe", "explorer.exe", None]
    assert chain[-1]["process_guid"] == "a0" and chain[-1]["note"]


def test_zero_guid_never_joins_unrelated_processes():
    idx = ProcessIndex()
    # a process whose own GUID Sysmon could not tell (all-zero), spawned by a payload
    idx.add([creation("payload", "{P1}", "{P0}", "dropper.exe"),
             creation("unknown", ZERO, "{P1}", "rundll32.exe"),
             # an unrelated process whose parent is unknown (all-zero as well)
             creation("ordinary", "{B1}", ZERO, "notepad.exe")])
    assert idx.lineage_of(orjson.dumps({"ProcessGuid": "{B1}", "ParentProcessGuid": ZERO}).decode()) == []
    # an event of that process, with only its ProcessGuid, reaches no one either
    assert idx.lineage_of(orjson.dumps({"ProcessGuid": "{b1}"}).decode()) == []
    # nor does any other event that merely carries the zero GUID
    assert idx.lineage_of(orjson.dumps({"ProcessGuid": ZERO}).decode()) == []


@pytest.mark.parametrize("value, expected", [
    (" {ABC-1} ", "abc-1"),
    ("{ AbC-1 }", "abc-1"),
    ("abc-1", "abc-1"),
    (ZERO, None),
    ("00000000-0000-0000-0000-000000000000", None),
    ("{}", None),
    ("  ", None),
    ("", None),
    (None, None),
])
def test_one_guid_spelling_for_every_process_join(value, expected):
    assert guid(value) == expected
