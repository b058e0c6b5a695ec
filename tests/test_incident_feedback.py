"""Verdicts on incidents, and the incident stage after a refit.

An analyst judges a story, not each of its alerts: `POST /feedback` with an ``incident_id``,
the incident page's buttons and `incidents mark` set the incident's status and each of its
alerts' (every change kept with who and when), and those alerts' twins stop alerting. The refit
at the end of the consumer's learning period must reach the incident stage too, or incident
roots ignore the never-seen images the new baseline defines.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from plugin.cli import main

from conftest import make_service_app

TOKEN = "incident-verdict-token"
HOST = "WS77.corp.example"
T0 = datetime(2099, 1, 1, tzinfo=timezone.utc)  # after every stored alert: past the quiet window


def _copy(imported_service_db: Path, tmp_path: Path, name: str = "copy.duckdb") -> Path:
    db = tmp_path / name
    shutil.copy(imported_service_db, db)
    return db


@pytest.fixture(scope="module")
def served(imported_service_db, tmp_path_factory):
    """(client without a token, client with one, the store they share)."""
    from plugin.store import open_store

    db = _copy(imported_service_db, tmp_path_factory.mktemp("served"))
    store = open_store(db)
    yield (TestClient(make_service_app(store)),
           TestClient(make_service_app(store, service_token=TOKEN)), store)
    store.close()


def _with_alerts(store, n: int = 1, skip: int = 0) -> list[dict]:
    """Open incidents holding at least one alert, the first ``skip`` passed over."""
    rows = [i for i in store.triage_incidents({"status": "open"}, top=None) if i["alerts"] >= 1]
    assert len(rows) >= skip + n, "the simulated import formed too few incidents with alerts"
    return rows[skip:skip + n]


def _alert_ids(store, incident_id: str) -> list[str]:
    return sorted(a["alert_id"] for a in store.incident(incident_id)["alert_rows"])


def _changes(store, alert_id: str) -> list[tuple]:
    return store.con.execute("SELECT status, note, analyst, changed_at FROM alert_changes WHERE "
                             "alert_id = ? ORDER BY changed_at", [alert_id]).fetchall()


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page carries no CSRF token"
    return m.group(1)


# -- the store ------------------------------------------------------------------------------
def test_marking_an_incident_marks_it_and_each_alert_with_an_audit_row(imported_service_db, tmp_path):
    from plugin.store import IncidentNotFound, open_store

    store = open_store(_copy(imported_service_db, tmp_path))
    try:
        (inc,) = _with_alerts(store)
        iid = inc["incident_id"]
        alerts = _alert_ids(store, iid)
        assert alerts and len(alerts) == inc["alerts"]
        change = store.mark_incident(iid[:10], "false_positive", "patch rollout", "erin")
        assert change["incident_id"] == iid and change["previous_status"] == "open"
        assert [a["alert_id"] for a in change["alerts"]] == alerts
        assert all(a["previous_status"] == "open" for a in change["alerts"])
        # the incident's status and its own audit row
        assert store.con.execute("SELECT status FROM incidents WHERE incident_id = ?",
                                 [iid]).fetchone()[0] == "false_positive"
        (row,) = store.con.execute("SELECT incident_id, status, previous, note, analyst, alerts, "
                                   "changed_at FROM incident_changes").fetchall()
        assert row[:6] == (iid, "false_positive", "open", "patch rollout", "erin", len(alerts))
        at = row[6]
        # each alert: the status, and an alert_changes row naming the incident, same who and when
        states = store.con.execute("SELECT alert_id, status FROM alerts WHERE alert_id IN "
                                   "(SELECT unnest(?))", [alerts]).fetchall()
        assert sorted(states) == [(a, "false_positive") for a in alerts]
        for a in alerts:
            assert _changes(store, a) == [("false_positive", f"via incident {iid}: patch rollout",
                                           "erin", at)]
            assert store.alert(a)["history"][-1]["note"].startswith(f"via incident {iid}")
        # an alert no longer open stops its twins (what the publisher reads)
        assert {a: s for a, (s, _) in store.alert_states(alerts).items()} == {
            a: "false_positive" for a in alerts}
        # the incident shows its history; reopening without a note still names the incident
        store.mark_incident(iid, "open", None, "frank")
        full = store.incident(iid)
        assert full["status"] == "open"
        assert [(h["status"], h["analyst"]) for h in full["history"]] == [
            ("false_positive", "erin"), ("open", "frank")]
        assert _changes(store, alerts[0])[-1][:3] == ("open", f"via incident {iid}", "frank")
        # a rescore's reset keeps the verdict, as it keeps an alert's
        store.mark_incident(iid, "suppressed", None, "frank")
        store.reset_incidents([inc["model"]])
        assert store.con.execute("SELECT status FROM incidents WHERE incident_id = ?",
                                 [iid]).fetchone()[0] == "suppressed"
        # what cannot be marked
        with pytest.raises(IncidentNotFound):
            store.mark_incident("ffffffffffff", "open", None, "erin")
        with pytest.raises(IncidentNotFound, match="ambiguous"):
            store.mark_incident("", "open", None, "erin")
        with pytest.raises(ValueError, match="status must be one of"):
            store.mark_incident(iid, "gone", None, "erin")
        assert store.con.execute("SELECT count(*) FROM incident_changes").fetchone()[0] == 3
    finally:
        store.close()


def test_a_marked_incidents_alerts_stop_alerting_on_the_topic(imported_service_db, tmp_path):
    """Twins of the incident's alerts arriving later are folded silently, like twins of an
    alert marked alone; an open alert's twin still goes out."""
    from plugin.normalize.normalizer import NormalizedEvent
    from plugin.pipeline.batch import Batch
    from plugin.store import open_store
    from plugin.stream.publish import AlertPublisher

    class Producer:
        def __init__(self) -> None:
            self.sent: list[dict] = []

        def produce(self, topic: str, key: bytes, value: bytes) -> None:
            self.sent.append(json.loads(value))

        def poll(self, timeout: float) -> None:
            pass

    store = open_store(_copy(imported_service_db, tmp_path))
    try:
        (inc,) = _with_alerts(store)
        marked = _alert_ids(store, inc["incident_id"])[0]
        other = next(a["alert_id"] for a in store.list_alerts(status="open", top=None)
                     if a["alert_id"] not in _alert_ids(store, inc["incident_id"]))
        store.mark_incident(inc["incident_id"], "false_positive", None, "erin")
        events, alerts = [], []
        for n, aid in enumerate((marked, other)):
            key = f"twin-{n}"
            events.append(NormalizedEvent(key, "test", n, 1, HOST, None, T0, None, None, "test",
                                          f"eid=1 twin={n}", f"{n:064x}", "{}",
                                          json.dumps({"twin": n})))
            alerts.append({"alert_id": aid, "event_key": key, "model": inc["model"],
                           "score": 2.0, "ts": T0})
        producer = Producer()
        AlertPublisher(producer, "alerts", store, inc["model"], "v")(Batch(events, alerts=alerts))
        assert [m["alert_id"] for m in producer.sent if m.get("kind") == "alert"] == [other]
    finally:
        store.close()


# -- POST /feedback ---------------------------------------------------------------------------
def test_feedback_marks_an_incident_and_its_alerts(served):
    client, _, store = served
    (inc,) = _with_alerts(store)
    iid = inc["incident_id"]
    r = client.post("/feedback", json={"incident_id": iid[:12], "status": "suppressed",
                                       "note": "lab host", "analyst": "gus"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["incident_id"] == iid and body["previous_status"] == "open"
    assert sorted(a["alert_id"] for a in body["alerts"]) == _alert_ids(store, iid)
    got = store.incident(iid)
    assert got["status"] == "suppressed"
    assert all(a["status"] == "suppressed" for a in got["alert_rows"])
    assert (got["history"][-1]["analyst"], got["history"][-1]["note"]) == ("gus", "lab host")
    a = store.alert(got["alert_rows"][0]["alert_id"])
    assert (a["history"][-1]["analyst"], a["history"][-1]["note"]) == (
        "gus", f"via incident {iid}: lab host")


def test_feedback_refuses_unknown_ids_and_ambiguous_targets(served):
    client, _, store = served
    (inc,) = _with_alerts(store, skip=1)
    alert = _alert_ids(store, inc["incident_id"])[0]
    unknown = client.post("/feedback", json={"incident_id": "ffffffffffff", "status": "open"})
    assert unknown.status_code == 404 and "no incident" in unknown.json()["detail"]
    for doc in ({"status": "open"},  # neither
                {"alert_id": alert, "incident_id": inc["incident_id"], "status": "open"},  # both
                {"incident_id": inc["incident_id"], "status": "gone"},
                {"incident_id": inc["incident_id"], "status": "open", "note": "x" * 2001},
                {"incident_id": 7, "status": "open"}):
        r = client.post("/feedback", json=doc)
        assert r.status_code == 422, (doc, r.text)
    both = client.post("/feedback", json={"alert_id": alert, "incident_id": inc["incident_id"],
                                          "status": "open"})
    assert "exactly one of alert_id or incident_id" in json.dumps(both.json())
    # nothing refused was kept
    assert store.incident(inc["incident_id"])["history"] == []
    assert store.alert(alert)["status"] == "open"
    # an alert is still marked as before
    assert client.post("/feedback", json={"alert_id": alert[:10],
                                          "status": "open"}).status_code == 200


# -- the incident page ------------------------------------------------------------------------
def test_incident_page_buttons_mark_the_incident(served):
    client, _, store = served
    (inc,) = _with_alerts(store, skip=2)
    iid = inc["incident_id"]
    html = client.get(f"/incidents/{iid}").text
    assert f'action="/incidents/{iid}/mark"' in html
    for value in ('value="false_positive"', 'value="suppressed"', 'value="open"'):
        assert value in html, value
    assert "no changes yet" in html
    r = client.post(f"/incidents/{iid}/mark", follow_redirects=False,
                    data={"status": "false_positive", "note": "update <agent>",
                          "analyst": "hana", "csrf": _csrf(html)})
    assert r.status_code == 303 and r.headers["location"] == f"/incidents/{iid}"
    got = store.incident(iid)
    assert got["status"] == "false_positive"
    assert all(a["status"] == "false_positive" for a in got["alert_rows"])
    html = client.get(r.headers["location"]).text
    assert "hana" in html and "update &lt;agent&gt;" in html and "no changes yet" not in html


def test_incident_form_needs_its_csrf_token_and_a_known_status(served):
    client, _, store = served
    (inc,) = _with_alerts(store, skip=3)
    iid = inc["incident_id"]
    html = client.get(f"/incidents/{iid}").text
    for form in ({"status": "suppressed"}, {"status": "suppressed", "csrf": "0" * 64}):
        r = client.post(f"/incidents/{iid}/mark", data=form, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
    other = TestClient(client.app)  # another browser's session: the token is not its own
    r = other.post(f"/incidents/{iid}/mark", follow_redirects=False,
                   data={"status": "suppressed", "csrf": _csrf(html)})
    assert r.status_code == 403
    r = client.post(f"/incidents/{iid}/mark", follow_redirects=False,
                    data={"status": "gone", "csrf": _csrf(html)})
    assert r.status_code == 400
    r = client.post("/incidents/ffffffffffff/mark", follow_redirects=False,
                    data={"status": "open", "csrf": _csrf(html)})
    assert r.status_code == 404
    assert store.incident(iid)["status"] == "open" and store.incident(iid)["history"] == []


def test_a_signed_in_browser_marks_an_incident_behind_the_token(served):
    _, gated, store = served
    (inc,) = _with_alerts(store, skip=4)
    iid = inc["incident_id"]
    browser = TestClient(gated.app)
    # no session: the form route is closed
    assert browser.post(f"/incidents/{iid}/mark", data={"status": "suppressed"},
                        follow_redirects=False).status_code == 401
    assert browser.post("/login", data={"token": TOKEN, "next": "/"},
                        follow_redirects=False).status_code == 303
    html = browser.get(f"/incidents/{iid}").text
    r = browser.post(f"/incidents/{iid}/mark", follow_redirects=False,
                     data={"status": "suppressed", "csrf": _csrf(html)})
    assert r.status_code == 303 and store.incident(iid)["status"] == "suppressed"
    # the session cookie does not open the JSON API
    assert browser.post("/feedback", json={"incident_id": iid,
                                           "status": "open"}).status_code == 401


# -- the command line -------------------------------------------------------------------------
def test_incidents_mark_command(imported_service_db, tmp_path, capsys):
    from plugin.store import open_store

    db = _copy(imported_service_db, tmp_path)
    store = open_store(db, read_only=True)
    try:
        (inc,) = _with_alerts(store)
        alerts = _alert_ids(store, inc["incident_id"])
    finally:
        store.close()
    iid = inc["incident_id"]
    assert main(["incidents", "mark", iid[:10], "--db", str(db), "--status", "false_positive",
                 "--note", "known tool", "--analyst", "ida"]) == 0
    out = capsys.readouterr().out
    assert f"incident {iid}: open -> false_positive, and {len(alerts)} alert(s)" in out
    assert main(["incidents", "--db", str(db), "mark", iid, "--status", "open", "--json"]) == 0
    change = json.loads(capsys.readouterr().out)
    assert change["previous_status"] == "false_positive" and change["status"] == "open"
    assert [a["previous_status"] for a in change["alerts"]] == ["false_positive"] * len(alerts)
    # `incidents` alone still lists, as the contract says
    assert main(["incidents", "--db", str(db), "--json", "--top", "0"]) == 0
    assert iid in {r["incident_id"] for r in json.loads(capsys.readouterr().out)}
    # usage errors: unknown id, unknown status
    assert main(["incidents", "mark", "ffffffffffff", "--db", str(db), "--status", "open"]) == 2
    assert "no incident with id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["incidents", "mark", iid, "--db", str(db), "--status", "gone"])
    assert exc.value.code == 2
    store = open_store(db, read_only=True)
    try:
        history = store.incident(iid)["history"]
        assert [(h["status"], h["note"]) for h in history] == [
            ("false_positive", "known tool"), ("open", None)]
        assert store.alert(alerts[0])["history"][0]["analyst"] == "ida"
    finally:
        store.close()


# -- the refit reaches the incident stage -----------------------------------------------------
def test_refit_gives_the_incident_stage_the_new_context(imported_service_db, tmp_path):
    """After the learning period's fit, a process running an image the new baseline never saw
    roots the incident of its child's outlier; one running a baseline image does not."""
    from plugin.detect.incidents import observe
    from plugin.pipeline.assemble import load_embedder, model_stages, refit
    from plugin.pipeline.incidents import IncidentStage
    from plugin.pipeline.score import ScoreStage
    from plugin.store import open_store

    store = open_store(_copy(imported_service_db, tmp_path))
    try:
        embedder = load_embedder(None)
        stages = model_stages(store, embedder, None)
        score = next(st for st in stages if isinstance(st, ScoreStage))
        stage = next(st for st in stages if isinstance(st, IncidentStage))
        assert stage.grouper.context is None  # the cold start: shipped clusters, no context
        refit(store, stages, embedder, None, None)
        context = stage.grouper.context
        assert context is not None and context is score.context.model
        known = sorted(context.images)[0]
        novel = "c:\\users\\<user>\\appdata\\local\\temp\\never-seen-dropper.exe"
        assert novel not in context.images

        def story(tag: str, image: str, minute: int) -> list:
            def fields(proc: str, parent: str | None = None) -> dict:
                f = {"ProcessGuid": f"{{{proc}-0000-0000-0000-000000000000}}"}
                if parent:
                    f["ParentProcessGuid"] = f"{{{parent}-0000-0000-0000-000000000000}}"
                return f

            ts = datetime(2024, 3, 5, 10, minute, tzinfo=timezone.utc)
            return [observe(f"{tag}-root", HOST, ts, 1, {**fields(f"{tag}aaaaaa", "feedfeed"),
                                                          "Image": image},
                            f"eid=1 image={image} parentimage=c:\\windows\\explorer.exe",
                            0.2, False),
                    observe(f"{tag}-child", HOST, ts, 1, fields(f"{tag}bbbbbb", f"{tag}aaaaaa"),
                            "eid=1 image=c:\\windows\\system32\\cmd.exe", 3.0, True)]

        grouped = stage.grouper.add(story("1", novel, 0) + story("2", known, 5))
        roots = {inc.root_guid for inc in grouped.incidents.values()}
        assert roots == {"1aaaaaa-0000-0000-0000-000000000000",  # the never-seen image
                         "2bbbbbb-0000-0000-0000-000000000000"}  # the child itself
    finally:
        store.close()
