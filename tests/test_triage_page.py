"""The triage page: what an analyst sees and clicks, over a real store of simulated events.

The routes through FastAPI's test client (list, filters, one alert, one incident, the verdict
form, the token gate and its login), and one run in a real browser against `serve` started as a
user would start it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import make_service_app

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token-for-tests"
HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def page(imported_service_db, tmp_path_factory):
    """(client without a token, client with one and a report folder, the store they share)."""
    from plugin.store import open_store

    d = tmp_path_factory.mktemp("page")
    db = d / "page.duckdb"
    shutil.copy(imported_service_db, db)
    report = d / "report"
    report.mkdir()
    (report / "report.html").write_text("<html><body>the comparison</body></html>")
    store = open_store(db)
    yield (TestClient(make_service_app(store)),
           TestClient(make_service_app(store, service_token=TOKEN,
                                       service_report_dir=str(report))), store)
    store.close()


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page carries no CSRF token"
    return m.group(1)


# -- the list ---------------------------------------------------------------------------------
def test_list_ranks_incidents_then_alerts_outside_them(page):
    client, _, store = page
    r = client.get("/")
    assert r.status_code == 200 and "script" not in r.headers["content-security-policy"]
    html = r.text
    incidents = store.triage_incidents()
    assert incidents and f"Incidents ({len(incidents)})" in html
    spots = [html.index(f"/incidents/{i['incident_id']}") for i in incidents[:5]]
    assert spots == sorted(spots)  # ranked by score, as the store ranks them
    assert html.index("Incidents (") < html.index("outside any incident")
    outside = store.triage_alerts()
    for a in outside:
        assert f"/alerts/{a['alert_id']}" in html
    # all alerts, ranked by score, on request
    html = client.get("/?alerts=all").text
    every = store.triage_alerts(outside_incidents=False)
    spots = [html.index(f"/alerts/{a['alert_id']}") for a in every[:5]]
    assert len(every) > len(outside) and spots == sorted(spots)


def test_filters_by_host_event_time_and_status(page):
    client, _, store = page
    inc = store.triage_incidents()
    host = inc[-1]["computer"]
    html = client.get("/", params={"host": host.lower()}).text
    assert all(f"/incidents/{i['incident_id']}" in html for i in inc if i["computer"] == host)
    assert not any(f"/incidents/{i['incident_id']}" in html for i in inc if i["computer"] != host)

    alerts = store.triage_alerts(outside_incidents=False)
    eid = alerts[0]["event_id"]
    html = client.get("/", params={"event_id": eid, "alerts": "all"}).text
    assert all((f"/alerts/{a['alert_id']}" in html) == (a["event_id"] == eid) for a in alerts)

    html = client.get("/", params={"since": "2099-01-01", "alerts": "all"}).text
    assert "no incidents match" in html and "no alerts match" in html
    html = client.get("/", params={"until": "2000-01-01T00:00:00Z"}).text
    assert "no incidents match" in html
    html = client.get("/", params={"status": "suppressed", "alerts": "all"}).text
    assert all(f"/alerts/{a['alert_id']}" not in html for a in alerts if a["status"] == "open")

    r = client.get("/", params={"since": "last tuesday", "event_id": "x", "host": host})
    assert r.status_code == 400 and "expected an ISO date" in r.text and "Sysmon event id" in r.text
    assert "last tuesday" in r.text  # shown back as typed, escaped


def test_list_shows_log_integrity_findings(page):
    client, _, store = page
    host = store.triage_incidents()[0]["computer"]
    html = client.get("/").text
    assert "Log integrity (0 with findings)" in html and "logs checked: no missing" in html
    store.record_integrity("evidence/<ws>.evtx", "ab" * 32, [{
        "computer": host, "channel": "Security", "first_ts": None, "last_ts": None,
        "records": 50, "record_id_gaps": [[10, 14]], "log_clears": [{"event_id": 1102}],
        "sysmon_changes": [], "gaps": 1, "missing_records": 3, "first_record_id": 1,
        "last_record_id": 53, "duplicate_record_ids": 0, "records_without_id": 0,
        "log_clear_count": 1, "sysmon_change_count": 0}])
    html = client.get("/", params={"host": host}).text
    assert "Log integrity (1 with findings)" in html and "evidence/&lt;ws&gt;.evtx" in html
    assert "1 (3)" in html  # one gap, three records missing
    assert "Log integrity" not in client.get("/", params={"host": "no-such-host"}).text


# -- one alert, one incident ------------------------------------------------------------------
def test_alert_page_shows_why(page):
    client, _, store = page
    a = store.triage_alerts(outside_incidents=False)[0]
    r = client.get(f"/alerts/{a['alert_id'][:10]}")  # a unique prefix names it, as in the CLI
    assert r.status_code == 200
    html = r.text
    for part in ("Canonical text", "<mark", "Why it stands out", "Process lineage",
                 'class="tree"', "Nearest stored events", "Cluster", "Hosts", "Status history",
                 'value="false_positive"', 'value="suppressed"', 'value="open"'):
        assert part in html, part
    assert a["computer"] in html
    # event text is escaped: the canonical text's <user> masks never reach the page as tags
    assert "&lt;user&gt;" in html and "<user>" not in html
    assert "/incidents/" in html  # the incidents it belongs to


def test_unknown_ids_are_404(page):
    client, _, _ = page
    assert client.get("/alerts/ffffffffffff").status_code == 404
    assert client.get("/incidents/ffffffffffff").status_code == 404
    r = client.post("/alerts/ffffffffffff/mark", data={"status": "open", "csrf": "x"})
    assert r.status_code in (403, 404)


def test_incident_page_lists_its_alerts_and_events(page):
    client, _, store = page
    i = store.triage_incidents()[0]
    r = client.get(f"/incidents/{i['incident_id']}")
    assert r.status_code == 200
    full = store.incident(i["incident_id"])
    assert all(f"/alerts/{a['alert_id']}" in r.text for a in full["alert_rows"])
    assert f"Events of its process tree ({len(full['event_rows'])}" in r.text


# -- the verdict form -------------------------------------------------------------------------
def test_feedback_form_marks_the_alert(page):
    client, _, store = page
    a = store.triage_alerts({"status": "open"}, outside_incidents=False)[1]
    html = client.get(f"/alerts/{a['alert_id']}").text
    r = client.post(f"/alerts/{a['alert_id']}/mark", follow_redirects=False,
                    data={"status": "false_positive", "note": "backup <agent>",
                          "analyst": "dana", "csrf": _csrf(html)})
    assert r.status_code == 303 and r.headers["location"] == f"/alerts/{a['alert_id']}"
    got = store.alert(a["alert_id"])
    assert got["status"] == "false_positive"
    assert (got["history"][-1]["analyst"], got["history"][-1]["note"]) == ("dana", "backup <agent>")
    html = client.get(r.headers["location"]).text
    assert "dana" in html and "backup &lt;agent&gt;" in html


def test_form_without_a_valid_csrf_token_is_refused(page):
    client, _, store = page
    a = store.triage_alerts({"status": "open"}, outside_incidents=False)[2]
    html = client.get(f"/alerts/{a['alert_id']}").text
    for form in ({"status": "suppressed"}, {"status": "suppressed", "csrf": "0" * 64}):
        r = client.post(f"/alerts/{a['alert_id']}/mark", data=form, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
    # a token is bound to its session: another browser's token does not pass
    other = TestClient(client.app)
    r = other.post(f"/alerts/{a['alert_id']}/mark", follow_redirects=False,
                   data={"status": "suppressed", "csrf": _csrf(html)})
    assert r.status_code == 403
    assert store.alert(a["alert_id"])["status"] == "open"
    r = client.post(f"/alerts/{a['alert_id']}/mark", follow_redirects=False,
                    data={"status": "gone", "csrf": _csrf(html)})
    assert r.status_code == 400 and store.alert(a["alert_id"])["status"] == "open"


# -- the token --------------------------------------------------------------------------------
def test_token_guards_every_route_but_healthz(page):
    _, gated, store = page
    anon = TestClient(gated.app)
    assert anon.get("/healthz").status_code == 200
    for method, path in (("get", "/metrics"), ("get", "/"), ("get", "/docs"),
                         ("post", "/feedback"), ("post", "/enrich")):
        r = getattr(anon, method)(path)
        assert r.status_code == 401 and "Bearer" in r.json()["detail"], path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert anon.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert anon.get("/metrics", headers=bearer).status_code == 200
    assert anon.get("/", headers=bearer).status_code == 200
    a = store.triage_alerts(outside_incidents=False)[-1]
    r = anon.post("/feedback", headers=bearer, json={"alert_id": a["alert_id"], "status": "open"})
    assert r.status_code == 200


def test_login_sets_a_strict_httponly_cookie(page):
    _, gated, store = page
    browser = TestClient(gated.app)
    r = browser.get("/incidents/x?y=1", headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fincidents%2Fx%3Fy%3D1"
    assert "service token" in browser.get("/login").text
    r = browser.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert r.status_code == 401 and "set-cookie" not in r.headers
    r = browser.post("/login", data={"token": TOKEN, "next": "https://evil.example/"},
                     follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # never off this server
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN.lower() not in cookie
    html = browser.get("/").text
    assert "log out" in html
    a = store.triage_alerts({"status": "open"}, outside_incidents=False)[3]
    # the cookie opens the page and its forms (with CSRF), not the JSON API
    assert browser.post("/feedback", json={"alert_id": a["alert_id"],
                                           "status": "suppressed"}).status_code == 401
    assert browser.post(f"/alerts/{a['alert_id']}/mark", data={"status": "suppressed"},
                        follow_redirects=False).status_code == 403
    html = browser.get(f"/alerts/{a['alert_id']}").text
    r = browser.post(f"/alerts/{a['alert_id']}/mark", follow_redirects=False,
                     data={"status": "suppressed", "csrf": _csrf(html)})
    assert r.status_code == 303 and store.alert(a["alert_id"])["status"] == "suppressed"
    # the report folder is served; logging out ends the session
    assert "the comparison" in browser.get("/report").text
    r = browser.post("/logout", data={"csrf": _csrf(html)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert browser.get("/", headers=HTML, follow_redirects=False).status_code == 303


def test_report_link_explains_how_to_make_one(page):
    client, _, _ = page
    r = client.get("/report")
    assert r.status_code == 404 and "sysmon-blt report --db" in r.text


# -- a real browser ---------------------------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's package "
                        "(apt-get install chromium); the browser test must run in CI")
        pytest.skip("chromium is absent (apt-get install chromium); CI installs and runs it")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"serve did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")


def test_browser_marks_an_alert_false_positive(imported_service_db, tmp_path):
    """An analyst's path in headless Chromium: the list, an incident, one of its alerts, the
    "false positive" button; then the database, read after the server stopped, holds the
    verdict. Screenshots of the list and the alert go to $TRIAGE_SCREENSHOT_DIR (else the test's
    temporary folder)."""
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed: it is in the `test` extra")
        pytest.skip("playwright is absent (pip install -e '.[test]')")
    # not SYSMON_BLT_*: the config reads every variable of that prefix and refuses unknown ones
    shots = Path(os.environ.get("TRIAGE_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "browser.duckdb"
    shutil.copy(imported_service_db, db)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_BLT_")}
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "plugin.cli", "serve", "--db", str(db),
                                 "--port", str(port)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_ready(base, proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"],
                                        headless=True)
            try:
                tab = browser.new_page(viewport={"width": 1300, "height": 1000})
                tab.goto(base + "/")
                assert tab.locator("h1").inner_text() == "Triage"
                tab.screenshot(path=str(shots / "triage-list.png"))
                tab.locator("table").first.locator("tbody a").first.click()
                tab.wait_for_url(re.compile(r".*/incidents/\w+$"))
                tab.locator("table").first.locator("tbody a").first.click()
                tab.wait_for_url(re.compile(r".*/alerts/\w+$"))
                alert_id = tab.url.rsplit("/", 1)[1]
                assert tab.locator("pre.canon mark").count() > 0
                tab.screenshot(path=str(shots / "triage-alert.png"), full_page=True)
                tab.fill("input[name=note]", "seen in a browser")
                tab.get_by_role("button", name="false positive").click()
                tab.wait_for_load_state()
                assert tab.url == f"{base}/alerts/{alert_id}"
                assert "seen in a browser" in tab.content()  # the status history shows it
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    from plugin.store import open_store

    store = open_store(db, read_only=True)  # DuckDB: one process; the server has let go
    try:
        got = store.alert(alert_id)
    finally:
        store.close()
    assert got["status"] == "false_positive" and got["history"][-1]["note"] == "seen in a browser"
    assert (shots / "triage-alert.png").stat().st_size > 10_000
