"""Incidents: outliers grouped by host, process tree and time (issue 13).

Grouping rules on hand-built process trees, the incident stage across batches, the store round
trip (replays count nothing twice, rescore resets), the alerts topic, the eval figures, and the
`incidents` command on a simulated import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from plugin.detect.context import ContextModel
from plugin.detect.incidents import (Incident, IncidentGrouper, incident_id, observe, ranked)
from plugin.detect.lineage import guid

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 3, 5, 10, 0, tzinfo=timezone.utc)
HOST = "WS01.corp.example"
ZERO = "{00000000-0000-0000-0000-000000000000}"
EXPLORER = "C:\\Windows\\explorer.exe"
PAYLOAD = "C:\\Users\\alice\\Downloads\\payload.exe"
CMD = "C:\\Windows\\System32\\cmd.exe"
WHOAMI = "C:\\Windows\\System32\\whoami.exe"
NOTEPAD = "C:\\Windows\\System32\\notepad.exe"


def g(name: str) -> str:
    """A process GUID as Sysmon writes it (braces, upper case) for a short name."""
    if name == "zero":
        return ZERO
    h = hashlib.sha256(name.encode()).hexdigest()
    return "{" + f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}".upper() + "}"


def _observe(key: str, host: str, minutes: float, event_id: int, fields: dict, text: str,
             score: float, outlier: bool, **kw):
    ob = observe(key, host, T0 + timedelta(minutes=minutes), event_id, fields, text, score,
                 outlier, alert_id=f"alert-{key}" if outlier else None, **kw)
    FIELDS[key] = fields
    return ob


FIELDS: dict[str, dict] = {}  # each hand-built event's fields, by key (for the eval test)


def create(key: str, proc: str, parent: str, image: str, minutes: float = 0.0,
           outlier: bool = False, host: str = HOST, score: float | None = None, **kw):
    text = f"eid=1 image={image.lower()} commandline={image.lower()} parentimage=x"
    return _observe(key, host, minutes, 1,
                    {"ProcessGuid": g(proc), "ParentProcessGuid": g(parent), "Image": image}, text,
                    score if score is not None else (2.0 if outlier else 0.3), outlier, **kw)


def act(key: str, event_id: int, proc: str, minutes: float = 0.0, outlier: bool = False,
        host: str = HOST, score: float | None = None, **kw):
    return _observe(key, host, minutes, event_id, {"ProcessGuid": g(proc)},
                    f"eid={event_id} image=x detail={key}",
                    score if score is not None else (1.5 if outlier else 0.2), outlier, **kw)


def attack_story() -> list:
    """explorer -> notepad (ordinary), explorer -> payload (odd) -> cmd -> whoami (odd)."""
    return [
        create("explorer", "explorer", "userinit", EXPLORER, 0),
        create("notepad", "notepad", "explorer", NOTEPAD, 1),
        act("notepad-file", 11, "notepad", 2),
        create("payload", "payload", "explorer", PAYLOAD, 3, outlier=True, score=3.0),
        act("payload-load", 7, "payload", 3.1),
        create("cmd", "cmd", "payload", CMD, 4),
        act("cmd-net", 3, "cmd", 4.5),
        create("whoami", "whoami", "cmd", WHOAMI, 5, outlier=True),
        act("explorer-load", 7, "explorer", 6),
        act("notepad-file-2", 11, "notepad", 7),
    ]


# -- grouping ---------------------------------------------------------------------------------
def test_root_is_the_outlier_ancestor_not_explorer_and_the_whole_tree_joins():
    out = IncidentGrouper("blt").add(attack_story())
    assert len(out.incidents) == 1
    inc = next(iter(out.incidents.values()))
    assert inc.root_guid == guid(g("payload")) and inc.root_image == PAYLOAD
    # every event of the payload's tree, outlier or not; nothing of explorer or its other child
    assert set(out.links) == {"payload", "payload-load", "cmd", "cmd-net", "whoami"}
    assert (inc.events, inc.outliers, len(inc.alert_ids)) == (5, 2, 2)
    assert inc.event_types == {1, 7, 3}
    assert inc.first_seen == T0 + timedelta(minutes=3)
    assert inc.last_seen == T0 + timedelta(minutes=5)
    assert inc.max_score == 3.0 and inc.distinct_texts == 2


def test_a_never_seen_image_roots_the_incident_and_its_earlier_events_join():
    """The payload's creation is not an outlier, but the baseline never ran its image: with the
    context model it is the root, and its creation (seen before any outlier) joins."""
    story = [create("explorer", "explorer", "userinit", EXPLORER, 0),
             create("payload", "payload", "explorer", PAYLOAD, 1),  # ordinary text, new binary
             act("payload-load", 7, "payload", 1.5),
             create("cmd", "cmd", "payload", CMD, 2, outlier=True)]
    seen = frozenset({EXPLORER.lower(), CMD.lower(), "x"})
    with_context = IncidentGrouper("blt", ContextModel(seen, threshold=2.0)).add(story)
    inc = next(iter(with_context.incidents.values()))
    assert inc.root_guid == guid(g("payload")) and inc.root_image == PAYLOAD
    assert set(with_context.links) == {"payload", "payload-load", "cmd"}
    assert inc.root_novel == 1  # the payload's own image
    # cold start (no context model): outlier status only, so the root is cmd itself
    cold = IncidentGrouper("blt").add(story)
    assert [i.root_guid for i in cold.incidents.values()] == [guid(g("cmd"))]
    assert set(cold.links) == {"cmd"}


def test_an_ordinary_process_with_an_outlier_holds_only_its_own_events():
    """explorer.exe loading an odd module is an incident of explorer's own events; the
    programs the user starts from it are not swept in (one incident per host otherwise)."""
    story = [create("explorer", "explorer", "userinit", EXPLORER, 0),
             create("notepad", "notepad", "explorer", NOTEPAD, 1),
             act("explorer-odd", 7, "explorer", 2, outlier=True),
             act("explorer-later", 11, "explorer", 3),
             create("word", "word", "explorer", "C:\\office\\winword.exe", 4),
             act("notepad-file", 11, "notepad", 5)]
    out = IncidentGrouper("blt").add(story)
    inc = next(iter(out.incidents.values()))
    assert inc.root_guid == guid(g("explorer"))
    assert set(out.links) == {"explorer", "explorer-odd", "explorer-later"}


def test_a_root_whose_creation_is_not_in_the_logs_is_named_by_its_events():
    ob = observe("dump", HOST, T0, 10, {"SourceProcessGUID": g("tool"), "SourceImage": CMD,
                                        "TargetProcessGUID": g("lsass")},
                 "eid=10 sourceimage=x targetimage=lsass", 2.0, True)
    out = IncidentGrouper("blt").add([ob])
    (inc,) = out.incidents.values()
    assert inc.root_guid == guid(g("tool")) and inc.root_image == CMD


def test_the_all_zero_guid_joins_nothing():
    story = [create("unknown-proc", "zero", "explorer", PAYLOAD, 0, outlier=True),
             create("a", "a", "zero", PAYLOAD, 1, outlier=True),  # parent unknown: a root itself
             create("b", "b", "zero", CMD, 2),  # another orphan: not a's child
             act("b-net", 3, "b", 3),
             act("zero-actor", 10, "zero", 4, outlier=True)]
    out = IncidentGrouper("blt").add(story)
    assert set(out.links) == {"a"}
    assert [i.root_guid for i in out.incidents.values()] == [guid(g("a"))]


def test_the_window_splits_a_quiet_tree_into_two_incidents():
    story = [create("payload", "payload", "explorer", PAYLOAD, 0, outlier=True),
             act("soon", 3, "payload", 30),  # within the hour after the outlier: joins
             act("late", 3, "payload", 95),  # after it: waits for a new outlier
             act("again", 10, "payload", 150, outlier=True)]
    out = IncidentGrouper("blt").add(story)
    first, second = out.incidents.values()
    root = guid(g("payload"))
    assert first.incident_id == incident_id("blt", HOST, root)
    opened = (T0 + timedelta(minutes=150)).isoformat()
    assert second.incident_id == incident_id("blt", HOST, root, opened)
    assert first.incident_id != second.incident_id
    assert {k for k, v in out.links.items() if v == first.incident_id} == {"payload", "soon"}
    # 'late' lies less than the window before the new outlier: it is part of that story
    assert {k for k, v in out.links.items() if v == second.incident_id} == {"late", "again"}
    wide = IncidentGrouper("blt", window=timedelta(hours=3)).add(story)
    assert len(wide.incidents) == 1 and len(wide.links) == 4


def test_the_id_is_deterministic_per_model_host_and_root():
    a = IncidentGrouper("blt").add(attack_story())
    b = IncidentGrouper("blt").add(attack_story())
    assert a.links == b.links
    (iid,) = set(a.links.values())
    assert iid == incident_id("blt", "ws01.CORP.example", guid(g("payload")))  # host in any case
    assert iid != incident_id("linformer", HOST, guid(g("payload")))
    # the same GUID on another host is another incident
    other = IncidentGrouper("blt").add([create("p", "payload", "e", PAYLOAD, 0, outlier=True,
                                               host="WS02")])
    assert set(other.links.values()) != {iid}


def test_ranking_weighs_breadth_not_only_the_peak_score():
    lone = Incident("lone", "blt", HOST, "r1", None)
    lone.add(T0, 1, 2.0, True, True, "eid=1 odd", "a1")
    story = Incident("story", "blt", HOST, "r2", None, root_novel=1)
    for i, eid in enumerate((1, 7, 3, 11, 1)):
        story.add(T0, eid, 1.5, True, True, f"text {i}", f"a{i}")
    assert lone.score == pytest.approx(2.0 + 0.75)
    assert story.score > lone.score > 2.0
    assert [i.incident_id for i in ranked([lone, story])] == ["story", "lone"]


def test_a_suppressed_outlier_opens_nothing():
    story = [create("payload", "payload", "explorer", PAYLOAD, 0, outlier=True, suppressed=True),
             act("load", 7, "payload", 1)]
    assert IncidentGrouper("blt").add(story).incidents == {}


def test_memory_is_bounded():
    grouper = IncidentGrouper("blt", max_processes=5, max_pending=10)
    grouper.add([create(f"c{i}", f"p{i}", "root", CMD, i / 10) for i in range(50)])
    grouper.add([act(f"e{i}", 7, "p49", 6 + i / 100) for i in range(40)])
    assert len(grouper._procs) <= 5 and grouper._pending <= 10


@pytest.mark.parametrize("zone", [timezone.utc, None], ids=["utc", "no-zone"])
def test_buffered_events_join_with_their_time_score_and_alert(zone):
    """Events before the first outlier wait packed (a consumer buffers hundreds of thousands);
    when the incident opens they join with the time, type, score and alert they came with,
    to the microsecond, and a time without a zone stays without one."""
    t0 = datetime(2024, 3, 5, 10, 0, 0, 123456, tzinfo=zone)
    create_fields = {"ProcessGuid": g("payload"), "ParentProcessGuid": g("explorer"),
                     "Image": PAYLOAD}
    story = [observe("payload", HOST, t0, 1, create_fields, "eid=1 image=payload", 0.4, False),
             observe("payload-odd", HOST, t0 + timedelta(seconds=30), 7,
                     {"ProcessGuid": g("payload")}, "eid=7 image=payload odd", 1.7, True,
                     suppressed=True, alert_id="alert-odd"),
             observe("payload-undated", HOST, None, 11, {"ProcessGuid": g("payload")},
                     "eid=11 image=payload", 0.2, False),
             observe("cmd", HOST, t0 + timedelta(minutes=2), 1,
                     {"ProcessGuid": g("cmd"), "ParentProcessGuid": g("payload"), "Image": CMD},
                     "eid=1 image=cmd", 2.5, True, alert_id="alert-cmd")]
    seen = frozenset({CMD.lower(), "x"})
    out = IncidentGrouper("blt", ContextModel(seen, threshold=2.0)).add(story)
    (inc,) = out.incidents.values()
    assert set(out.links) == {"payload", "payload-odd", "payload-undated", "cmd"}
    assert inc.first_seen == t0 and inc.first_seen.tzinfo is zone
    assert inc.last_seen == t0 + timedelta(minutes=2)
    assert inc.events == 4 and inc.event_types == {1, 7, 11} and inc.max_score == 2.5
    assert inc.alert_ids == {"alert-odd", "alert-cmd"}


# -- the stage, across batches ----------------------------------------------------------------
def _event(key: str, ob_fields: dict, event_id: int, text: str, minutes: float):
    from plugin.normalize.normalizer import NormalizedEvent

    return NormalizedEvent(key, "test", 0, event_id, HOST, None, T0 + timedelta(minutes=minutes),
                           None, None, "test", text, hashlib.sha256(text.encode()).hexdigest(),
                           json.dumps(ob_fields), "")


def _score(events, outliers: set[str], model: str = "blt") -> list[dict]:
    return [{"event_key": e.event_key, "model": model, "version": 1, "cluster": 0,
             "distance": 0.1, "score": 2.0 if e.event_key in outliers else 0.2,
             "is_outlier": e.event_key in outliers, "detail": "{}", "explanation": None}
            for e in events]


def _batches():
    """Batch 1: the payload starts and loads a module (nothing odd yet); batch 2: it opens
    lsass (an outlier), and an unrelated process does something ordinary."""
    from plugin.pipeline.batch import Batch

    first = [_event("explorer", {"ProcessGuid": g("explorer"), "ParentProcessGuid": g("userinit"),
                                 "Image": EXPLORER}, 1, "eid=1 image=explorer", 0),
             _event("payload", {"ProcessGuid": g("payload"), "ParentProcessGuid": g("explorer"),
                                "Image": PAYLOAD}, 1, "eid=1 image=payload", 1),
             _event("payload-load", {"ProcessGuid": g("payload")}, 7, "eid=7 image=payload", 2)]
    second = [_event("payload-lsass", {"SourceProcessGuid": g("payload")}, 10,
                     "eid=10 sourceimage=payload targetimage=lsass", 3),
              _event("explorer-file", {"ProcessGuid": g("explorer")}, 11,
                     "eid=11 image=explorer", 4)]
    out = []
    for events, outliers in ((first, set()), (second, {"payload-lsass"})):
        b = Batch(events)
        b.assignments = _score(events, outliers) + _score(events, set(), "linformer")
        b.alerts = [{"alert_id": "alert-lsass", "event_key": k, "model": "blt", "score": 2.0,
                     "ts": T0} for k in outliers]
        out.append(b)
    return out


def test_the_stage_links_this_batch_and_names_earlier_events_of_the_tree():
    from plugin.pipeline.incidents import IncidentStage

    stage = IncidentStage("blt")
    first, second = _batches()
    stage(first)
    assert first.incidents == [] and all("incident_id" not in a for a in first.assignments)
    stage(second)
    (row,) = second.incidents
    assert row["root_guid"] == guid(g("payload")) and row["root_image"] == PAYLOAD
    assert sorted(row["linked_before"]) == ["payload", "payload-load"]
    assert row["alert_ids"] == ["alert-lsass"] and row["events"] == 3
    linked = {a["event_key"]: a.get("incident_id")
              for a in second.assignments if a["model"] == "blt"}
    assert linked == {"payload-lsass": row["incident_id"], "explorer-file": None}
    assert all("incident_id" not in a for a in second.assignments if a["model"] == "linformer")
    assert stage.stats()["incidents"] == 1


# -- the store --------------------------------------------------------------------------------
def _write(store, batch, with_events: bool = True) -> int:
    from plugin.pipeline.flow import event_rows
    from plugin.store import utcnow

    rows = event_rows(batch.events, utcnow()) if with_events else {}
    return store.write_batch(rows, batch.dead, batch.vectors, batch.assignments, batch.alerts,
                             incidents=batch.incidents)


def _stored(store) -> tuple:
    (row,) = store.list_incidents()
    links = dict(store.con.execute("SELECT event_key, incident_id FROM assignments WHERE "
                                   "model = 'blt' AND incident_id IS NOT NULL").fetchall())
    return row, links


def test_store_round_trip_and_a_replay_counts_nothing_twice(tmp_path):
    from plugin.pipeline.incidents import IncidentStage
    from plugin.store import open_store

    store = open_store(tmp_path / "i.duckdb")
    try:
        stage = IncidentStage("blt")
        first, second = _batches()
        for b in (first, second):
            stage(b)
            _write(store, b)
        row, links = _stored(store)
        iid = second.incidents[0]["incident_id"]
        assert row["incident_id"] == iid and row["root_image"] == PAYLOAD
        assert (row["events"], row["outliers"], row["alerts"]) == (3, 1, 1)
        assert row["first_seen"] == T0 + timedelta(minutes=1)
        assert row["last_seen"] == T0 + timedelta(minutes=3)
        assert row["event_types"] == [1, 7, 10] and row["status"] == "open"
        assert links == {"payload": iid, "payload-load": iid, "payload-lsass": iid}
        assert store.incident_count() == 1
        # alerts know their incidents
        assert store.alert("alert-lsass")["incident_ids"] == [iid]
        assert store.list_alerts()[0]["incident_ids"] == [iid]
        # a replay after a crash: a restarted run (fresh stage) writes both batches again
        replay = IncidentStage("blt")
        for b in _batches():
            replay(b)
            _write(store, b)
        again, links_again = _stored(store)
        assert (again["events"], again["outliers"], again["alerts"]) == (3, 1, 1)
        assert links_again == links  # batch 1's rows, rewritten without a link, keep theirs
        # a rescore: reset, then the same stages over stored events (no events written)
        store.reset_incidents(["blt"])
        assert store.list_incidents() == [] and store.alert("alert-lsass")["incident_ids"] == []
        rescored = IncidentStage("blt")
        for b in _batches():
            rescored(b)
            _write(store, b, with_events=False)
        final, links_final = _stored(store)
        assert (final["events"], final["outliers"], final["alerts"]) == (3, 1, 1)
        assert links_final == links
    finally:
        store.close()


def test_a_replay_through_the_flow_counts_nothing_twice(tmp_path):
    """The real sink path: a Flow writes the stage's incident rows with each batch (needs Flow
    to hand `incidents=b.incidents` to write_batch); a restarted run over the same events adds
    nothing."""
    from plugin.pipeline.flow import Flow
    from plugin.pipeline.incidents import IncidentStage
    from plugin.store import open_store

    def scored(batch):  # stands in for the score stage: fixed scores per event
        for e in batch.events:
            batch.assignments += _score([e], {"payload-lsass"})
        batch.alerts += [{"alert_id": "alert-lsass", "event_key": "payload-lsass", "model": "blt",
                          "score": 2.0, "ts": T0}
                         for e in batch.events if e.event_key == "payload-lsass"]

    store = open_store(tmp_path / "f.duckdb")
    try:
        for _ in range(2):
            flow = Flow(store, None, [scored, IncidentStage("blt")], batch_size=3)
            for b in _batches():
                for e in b.events:
                    flow.add(e)
            flow.flush()
            flow.drain()
            flow.close()
            row, links = _stored(store)
            assert (row["events"], row["outliers"], row["alerts"]) == (3, 1, 1)
            assert set(links) == {"payload", "payload-load", "payload-lsass"}
    finally:
        store.close()


# -- the alerts topic -------------------------------------------------------------------------
class _Producer:
    def __init__(self):
        self.sent = []

    def produce(self, topic, key=None, value=None, headers=None):
        self.sent.append((key.decode(), json.loads(value)))

    def poll(self, _):
        return 0


class _States:
    def alert_states(self, ids):
        return {}


def test_the_alerts_topic_gets_one_incident_message_per_incident_and_batch():
    from plugin.pipeline.incidents import IncidentStage
    from plugin.stream.publish import AlertPublisher

    producer = _Producer()
    publisher = AlertPublisher(producer, "alerts", _States(), "blt", "v1")
    stage = IncidentStage("blt")
    first, second = _batches()
    for e in second.events:
        e.raw = json.dumps({"event": e.event_key})
    for b in (first, second):
        stage(b)
        publisher(b)
    kinds = [m["kind"] for _, m in producer.sent]
    assert sorted(kinds) == ["alert", "incident"]
    (key, inc), = [(k, m) for k, m in producer.sent if m["kind"] == "incident"]
    assert key == HOST and inc["root_guid"] == guid(g("payload")) and inc["events"] == 3
    assert "linked_before" not in inc
    (alert,) = [m for _, m in producer.sent if m["kind"] == "alert"]
    assert alert["incident_ids"] == [inc["incident_id"]]
    assert publisher.stats()["incidents_published"] == 1


# -- evaluation -------------------------------------------------------------------------------
def test_eval_ranks_the_first_incident_holding_attack_events():
    import numpy as np

    from plugin.detect.evaluate import _Events, incident_metrics

    story = attack_story() + [create("noise", "noise", "services", CMD, 8, outlier=True,
                                     score=9.0, host="WS02")]
    ev = _Events([o.event_key for o in story],
                 [hashlib.sha256(o.text.encode()).hexdigest() for o in story],
                 [o.text for o in story], [FIELDS[o.event_key] for o in story],
                 ["s"] * len(story), [o.event_id for o in story], [o.computer for o in story],
                 [o.ts for o in story])
    scores = np.array([o.score if o.is_outlier else 0.2 for o in story])
    attack = {"payload", "payload-load", "cmd", "cmd-net", "whoami"}
    is_attack = np.array([k in attack for k in ev.keys])
    m = incident_metrics("blt", ev, scores, is_attack)
    assert m["incidents"] == 2 and m["alerts"] == 3 and m["outlier_events"] == 3
    # the lone noise outlier peaks higher (9.0 + 0.75), the attack story ranks by breadth below it
    assert m["first_attack_incident_rank"] == 2
    assert m["attack_share_top3"] == 1.0 and m["attack_events_in_incidents"] == 5
    assert m["top"][1]["attack_events"] == 5


# -- configuration and the command line -------------------------------------------------------
def test_the_window_is_a_config_key():
    from plugin.config import load_config
    from plugin.errors import UsageError

    assert load_config(None, {}, environ={}).incident_window_minutes == 60.0
    cfg = load_config(None, {}, environ={"SYSMON_BLT_INCIDENT_WINDOW_MINUTES": "15"})
    assert cfg.incident_window_minutes == 15.0
    with pytest.raises(UsageError, match="incident_window_minutes"):
        load_config(None, {}, environ={"SYSMON_BLT_INCIDENT_WINDOW_MINUTES": "0"})


def run(*args: str, cwd: Path = ROOT, stdin: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYSMON_BLT_WORKERS": "0"}
    env.pop("SYSMON_BLT_DB", None)
    return subprocess.run([sys.executable, "-m", "plugin.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=env, input=stdin)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    work = tmp_path_factory.mktemp("incidents")
    events = work / "events.jsonl"
    r = run("simulate", "--events", "3000", "--seed", "3", "--out", str(events))
    assert r.returncode == 0, r.stderr
    db = work / "sim.duckdb"
    r = run("import", str(events), "--db", str(db))
    assert r.returncode == 0, r.stderr
    return db, r.stdout


def test_import_ends_with_the_top_incidents(imported):
    _, summary = imported
    tail = summary.split("top incidents (sysmon-blt incidents):")
    assert len(tail) == 2, summary
    header, *rows = [line for line in tail[1].splitlines() if line.strip()]
    assert header.split()[:3] == ["score", "incident", "host"]
    assert 1 <= len(rows) <= 5 and summary.rstrip().endswith(rows[-1].strip())
    assert " incidents" in summary.split("outliers")[1].splitlines()[0]


def test_the_incidents_command_ranks_and_links_alerts(imported):
    db, _ = imported
    r = run("incidents", "--db", str(db), "--json", "--top", "0")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and [x["score"] for x in rows] == sorted((x["score"] for x in rows), reverse=True)
    assert all(x["events"] >= x["outliers"] >= 1 and x["alerts"] >= 1 for x in rows)
    assert all(x["root_guid"] and x["computer"] for x in rows)
    table = run("incidents", "--db", str(db), "--top", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["score", "incident", "host"]
    assert lines[1].split()[1] == rows[0]["incident_id"][:12]
    assert len([ln for ln in lines[1:] if not ln.startswith("(")]) == min(3, len(rows))
    # every alert's incidents are listed incidents, and some alert has one
    alerts = json.loads(run("alerts", "list", "--db", str(db), "--json", "--top", "0").stdout)
    ids = {x["incident_id"] for x in rows}
    assert any(a["incident_ids"] for a in alerts)
    assert all(set(a["incident_ids"]) <= ids for a in alerts)
    # `alerts show` and the enrich document of a stored alert name them too
    a = next(a for a in alerts if a["incident_ids"])
    shown = json.loads(run("alerts", "show", a["alert_id"], "--db", str(db), "--json").stdout)
    assert shown["incident_ids"] == a["incident_ids"]
    human = run("alerts", "show", a["alert_id"][:10], "--db", str(db)).stdout
    assert "in incident(s) " + a["incident_ids"][0][:12] in human
    enriched = run("enrich", "--db", str(db), stdin=json.dumps({"alert_id": a["alert_id"]}))
    assert enriched.returncode == 0, enriched.stderr
    assert json.loads(enriched.stdout)["incident_ids"] == a["incident_ids"]


def test_incidents_help_teaches_and_bad_input_is_a_usage_error(tmp_path):
    h = run("incidents", "--help")
    assert h.returncode == 0
    text = " ".join(h.stdout.split())
    assert "explorer.exe" in text and "incident_window_minutes" in text and "--top" in text
    missing = run("incidents", "--db", str(tmp_path / "none.duckdb"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "none.duckdb").exists()


CSRSS = "C:\\Windows\\System32\\csrss.exe"
SVCHOST = "C:\\Windows\\System32\\svchost.exe"


def access(key: str, source: str, target: str, minutes: float = 0.0, outlier: bool = False,
           score: float | None = None):
    """A ProcessAccess of ``target`` by ``source`` (the actor is the SourceProcessGuid)."""
    return _observe(key, HOST, minutes, 10,
                    {"SourceProcessGuid": g(source), "TargetProcessGuid": g(target)},
                    f"eid=10 sourceimage=x targetimage=y detail={key}",
                    score if score is not None else (1.5 if outlier else 0.2), outlier)


def test_processes_acting_on_an_incidents_tree_join_its_story():
    """csrss and svchost opening the payload belong to the payload's incident, outlier or not,
    before its first outlier (buffered under the payload) or after; an access to a process in no
    incident stays out, and an actor with a flagged tree of its own keeps its own incident."""
    known = frozenset(p.lower() for p in (CSRSS, SVCHOST, CMD, EXPLORER, "x"))
    grouper = IncidentGrouper("blt", ContextModel(known, 2.0))  # the payload's image is new
    got = grouper.add([
        create("csrss", "csrss", "smss", CSRSS, 0),
        create("svchost", "svchost", "services", SVCHOST, 0),
        create("payload", "payload", "explorer", PAYLOAD, 1),
        access("csrss-opens-payload", "csrss", "payload", 1.1),
        create("cmd", "cmd", "payload", CMD, 2),
        act("payload-odd", 13, "payload", 3, outlier=True),
        access("svchost-opens-cmd", "svchost", "cmd", 4, outlier=True),
        access("svchost-opens-payload", "svchost", "payload", 5),
        access("svchost-opens-lsass", "svchost", "lsass", 6),
        create("dropper", "dropper", "explorer", PAYLOAD + "2", 7, outlier=True),
        access("dropper-opens-payload", "dropper", "payload", 8),
    ])
    payload = incident_id("blt", HOST, guid(g("payload")))
    dropper = incident_id("blt", HOST, guid(g("dropper")))
    assert {k for k, i in got.links.items() if i == payload} == {
        "payload", "payload-odd", "csrss-opens-payload", "cmd", "svchost-opens-cmd", "svchost-opens-payload"}
    assert got.links["dropper-opens-payload"] == dropper
    assert "svchost-opens-lsass" not in got.links
    assert set(got.incidents) == {payload, dropper}
    assert got.incidents[payload].outliers == 2
