"""The triage page's routes: the ranked list at `/`, one alert, one incident, the verdict forms
(an alert's, an incident's), the comparison report, and the login form when a token is set.

Server-rendered HTML without scripts (the Content-Security-Policy forbids them): nothing to
build, and an analyst on a locked-down jump host can use it. The page reads through the same
store and enricher as the JSON API, under the same lock, and its verdict buttons go through the
same `plugin.service.feedback.mark` as `POST /feedback`.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, time, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from plugin.detect.enrich import Enricher
from plugin.detect.explain import reasons
from plugin.service import render, views
from plugin.service.auth import COOKIE, Auth, safe_next
from plugin.service.feedback import BadVerdict, mark, mark_incident
from plugin.service.limits import form_fields
from plugin.store import STATUSES, AlertNotFound, Store
from plugin.store.triage import IncidentNotFound, TriageFilter

log = structlog.get_logger(__name__)

TOP_INCIDENTS = 100
TOP_ALERTS = 200
FILTERS = ("host", "since", "until", "status", "event_id")


def is_form_post(path: str) -> bool:
    """The page's own POST routes: a signed-in browser's cookie opens them (with CSRF)."""
    return path == "/logout" or (path.startswith(("/alerts/", "/incidents/"))
                                 and path.endswith("/mark"))


def _when(value: str, *, end_of_day: bool) -> datetime:
    """An ISO date or time, UTC unless it names an offset; a bare date as `until` means the
    end of that day (what "until March 2" means to a person)."""
    v = value.strip()
    t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if end_of_day and len(v) == 10:  # YYYY-MM-DD
        t = datetime.combine(t.date(), time.max)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def parse_filters(params: Any) -> tuple[TriageFilter, dict[str, str], list[str]]:
    """(the filter for the store, the values as typed, what was refused and why). A bad value
    is dropped with a message rather than failing the page: the rest still filters."""
    raw = {k: (params.get(k) or "").strip() for k in FILTERS}
    f: TriageFilter = {}
    errors: list[str] = []
    if raw["host"]:
        f["host"] = raw["host"]
    for key in ("since", "until"):
        if raw[key]:
            try:
                f[key] = _when(raw[key], end_of_day=key == "until")
            except ValueError:
                errors.append(f"{key} {raw[key]!r}: expected an ISO date or time, e.g. "
                              "2024-03-01 or 2024-03-01T12:00 (UTC unless an offset is given)")
    if raw["status"]:
        if raw["status"] in STATUSES:
            f["status"] = raw["status"]
        else:
            errors.append(f"status {raw['status']!r}: expected one of {', '.join(STATUSES)}")
    if raw["event_id"]:
        if raw["event_id"].isdigit() and 0 < int(raw["event_id"]) < 256:
            f["event_id"] = int(raw["event_id"])
        else:
            errors.append(f"event id {raw['event_id']!r}: expected a Sysmon event id (1-255)")
    return f, raw, errors


def page_router(store: Store, enricher: Enricher, auth: Auth, lock: threading.Lock, *,
                report_dir: str | None = None) -> APIRouter:
    """The page's routes over the app's store, enricher, auth and lock."""
    router = APIRouter(include_in_schema=False)

    def session(request: Request) -> tuple[str, bool]:
        """The browser's session cookie, or a new one: the CSRF token is bound to it (without a
        configured token, an anonymous session serves that purpose alone)."""
        cookie = request.cookies.get(COOKIE)
        if auth.session_ok(cookie):
            return cookie or "", False
        return auth.new_session(), True

    def respond(request: Request, title: str, build, status_code: int = 200) -> Response:
        cookie, new = session(request)
        csrf = auth.csrf_for(cookie)
        resp = render.page(render.frame(title, build(csrf), csrf=csrf, logout=auth.required,
                                        db=store.path), status_code)
        if new:
            auth.set_cookie(resp, cookie)
        return resp

    def refuse(request: Request, status_code: int, title: str, text: str) -> Response:
        return respond(request, title, lambda _: views.message(title, text), status_code)

    def csrf_ok(request: Request, form: dict[str, str]) -> bool:
        # a request bearing the token comes from a client, not a browser a site could drive
        return (auth.bearer_ok(request.headers.get("authorization"))
                or auth.csrf_ok(request.cookies.get(COOKIE), form.get("csrf")))

    @router.get("/")
    def triage(request: Request) -> Response:
        f, raw, errors = parse_filters(request.query_params)
        all_alerts = request.query_params.get("alerts") == "all"
        with lock:
            incidents = store.triage_incidents(f, top=TOP_INCIDENTS)
            alerts = store.triage_alerts(f, outside_incidents=not all_alerts, top=TOP_ALERTS)
            integrity = store.integrity_findings()
        if f.get("host"):
            integrity = [r for r in integrity
                         if (r.get("computer") or "").lower() == f["host"].lower()]
        return respond(request, "Triage", lambda _: views.triage_list(
            incidents, alerts, raw, all_alerts=all_alerts, errors=errors,
            top=(TOP_INCIDENTS, TOP_ALERTS), integrity=integrity), 400 if errors else 200)

    @router.get("/alerts/{alert_id}")
    def alert(request: Request, alert_id: str) -> Response:
        try:
            with lock:
                a = store.alert(alert_id)
                hosts = store.alert_hosts(a["alert_id"])
                block, note = _enrich(enricher, a["alert_id"])
        except AlertNotFound as exc:
            return refuse(request, 404, "No such alert", str(exc))
        expl, text = _explanation(a, block)
        return respond(request, f"Alert {a['alert_id'][:12]}", lambda csrf: views.alert_view(
            a, expl, text, reasons(expl), block.get("neighbors") or [], hosts, csrf=csrf,
            enrich_note=note))

    def give_verdict(request: Request, form: dict[str, str], what: str, marker, missing,
                     page: str) -> Response:
        """The verdict buttons of an alert's or an incident's page: one path for both, so the
        CSRF check, the analyst default and the refusals cannot drift apart. ``marker`` takes
        (status, note, analyst) and returns the change; ``page`` is where to go back to."""
        if not csrf_ok(request, form):
            log.warning("csrf_refused", path=request.url.path)
            return refuse(request, 403, "Form expired",
                          f"The form's CSRF token is missing or stale: reload the {what}'s "
                          "page and give the verdict again.")
        try:
            change = marker(form.get("status", ""), form.get("note") or None,
                            (form.get("analyst") or "").strip() or "page")
        except missing as exc:
            return refuse(request, 404, f"No such {what}", str(exc))
        except BadVerdict as exc:
            return refuse(request, 400, "Verdict not kept", str(exc))
        return RedirectResponse(page + quote(change[f"{what}_id"], safe=""), 303)

    @router.post("/alerts/{alert_id}/mark")
    def verdict(request: Request, alert_id: str,
                form: dict[str, str] = Depends(form_fields)) -> Response:
        return give_verdict(request, form, "alert", lambda status, note, analyst: mark(
            store, lock, alert_id, status, note, analyst, via="page"), AlertNotFound, "/alerts/")

    @router.get("/incidents/{incident_id}")
    def incident(request: Request, incident_id: str) -> Response:
        try:
            with lock:
                i = store.incident(incident_id)
        except IncidentNotFound as exc:
            return refuse(request, 404, "No such incident", str(exc))
        return respond(request, f"Incident {i['incident_id'][:12]}",
                       lambda csrf: views.incident_view(i, csrf=csrf))

    @router.post("/incidents/{incident_id}/mark")
    def incident_verdict(request: Request, incident_id: str,
                         form: dict[str, str] = Depends(form_fields)) -> Response:
        return give_verdict(request, form, "incident", lambda status, note, analyst: mark_incident(
            store, lock, incident_id, status, note, analyst, via="page"), IncidentNotFound,
            "/incidents/")

    @router.get("/report")
    def report(request: Request) -> Response:
        path = Path(report_dir) / "report.html" if report_dir else None
        if path is not None and path.is_file():
            return FileResponse(path, media_type="text/html", headers=render.HEADERS)
        return respond(request, "Comparison report",
                       lambda _: views.report_missing(store.path, report_dir), 404)

    @router.get("/login")
    def login_form(request: Request) -> Response:
        if not auth.required:
            return RedirectResponse("/", 303)
        nxt = safe_next(request.query_params.get("next"))
        return render.page(render.frame("Sign in", views.login_view(nxt)))

    @router.post("/login")
    async def login(request: Request, form: dict[str, str] = Depends(form_fields)) -> Response:
        nxt = safe_next(form.get("next"))
        if not auth.required:
            return RedirectResponse(nxt, 303)
        if not auth.token_ok(form.get("token")):
            log.warning("login_refused", client=request.client.host if request.client else None)
            await asyncio.sleep(0.5)  # a guesser pays for each try; the analyst barely notices
            return render.page(render.frame("Sign in", views.login_view(
                nxt, "That is not the service token.")), 401)
        resp = RedirectResponse(nxt, 303)
        auth.set_cookie(resp, auth.new_session())
        log.info("login", client=request.client.host if request.client else None)
        return resp

    @router.post("/logout")
    def logout(request: Request, form: dict[str, str] = Depends(form_fields)) -> Response:
        if not csrf_ok(request, form):
            return refuse(request, 403, "Form expired", "Reload the page and log out again.")
        auth.revoke(request.cookies.get(COOKIE))
        resp = RedirectResponse("/login" if auth.required else "/", 303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    return router


def _enrich(enricher: Enricher, alert_id: str) -> tuple[dict, str | None]:
    """The alert's live enrichment block (neighbours, the lineage walked over the whole store,
    its spans), and a note when it could not be had: the page then shows what was stored."""
    try:
        block = enricher.enrich({"alert_id": alert_id})["sysmon_blt"]
    except Exception as exc:  # the page must still show the alert
        log.warning("page_enrich_failed", alert_id=alert_id, error=str(exc))
        return {}, f"live enrichment failed ({exc}); showing the explanation stored at import"
    if "error" in block:
        return {}, f"live enrichment failed ({block['error']}); showing the stored explanation"
    return block, None


def _explanation(a: dict, block: dict) -> tuple[dict, str]:
    """The explanation to show and the text its spans index: the live one when it has spans
    (it was computed on the text enrich rebuilt), else the one stored at import, with the live
    lineage when there is one."""
    live = block.get("explanation") or {}
    if live.get("surprising_spans") is not None and block.get("normalized"):
        return live, block["normalized"]
    stored = dict(a.get("explanation") or {})
    if live.get("process_lineage"):
        stored["process_lineage"] = live["process_lineage"]
    return stored, a.get("normalized") or ""

