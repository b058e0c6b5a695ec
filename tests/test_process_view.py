"""`plugin.detect.context.process_view`: an event's fields as the process-tree walks read them,
parsed once per batch for the score and incident stages."""

from __future__ import annotations

import orjson

from plugin.detect.context import process_fields, process_view


def test_the_view_keeps_process_guids_and_images_in_any_case():
    fields = {"RuleName": "-", "SourceProcessGUID": "{A}", "TargetProcessGUID": "{B}",
              "SourceImage": "C:\\x.exe", "GrantedAccess": "0x1010", "CallTrace": "x" * 500}
    view = process_view({}, "k", orjson.dumps(fields).decode())
    assert view == {"sourceprocessguid": "{A}", "targetprocessguid": "{B}",
                    "sourceimage": "C:\\x.exe"}
    assert process_fields(view) == {"sourceprocessguid": "{A}", "targetprocessguid": "{B}"}
    assert process_fields(fields) == process_fields(view)


def test_unreadable_fields_give_an_empty_view_not_a_failure():
    assert process_view({}, "a", "") == {}
    assert process_view({}, "b", "{not json") == {}
    assert process_view({}, "c", "[1, 2]") == {}


def test_a_batch_parses_an_event_once_for_every_stage():
    views: dict[str, dict] = {}
    first = process_view(views, "k", '{"ProcessGuid": "{A}", "Image": "C:\\\\a.exe"}')
    # a second stage asking for the same event reads the batch's view, not the JSON again
    assert process_view(views, "k", "{unparsed") is first
    assert first == {"processguid": "{A}", "image": "C:\\a.exe"}
