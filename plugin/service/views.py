"""The triage page's views: each page's body from the rows the store and enrich gave.

Kept apart from the routes (`plugin.service.page`) so a page can be read, and tested, as the
HTML it is; every value passes through `plugin.service.render` helpers, which escape it.
"""

from __future__ import annotations

from collections.abc import Sequence

from plugin.detect.integrity import is_alarming
from plugin.service.render import (Cell, alert_link, cut, e, hidden, incident_link, link,
                                   query_url, score, status, table, ts)
from plugin.store import STATUSES

ACTIONS = (("false_positive", "false positive"), ("suppressed", "suppress"), ("open", "reopen"))


# -- the list ---------------------------------------------------------------------------------
def filter_form(raw: dict[str, str], all_alerts: bool) -> str:
    """A GET form: the filters live in the URL, so a filtered view can be bookmarked or sent.
    ``raw``: the filters as typed, shown back as typed (also when one was refused)."""
    def field(name: str, label: str, kind: str = "text", extra: str = "") -> str:
        return (f'<label>{e(label)}<input type="{kind}" name="{name}" '
                f'value="{e(raw.get(name) or "")}" {extra}></label>')

    opts = "".join(f'<option value="{s}"{" selected" if raw.get("status") == s else ""}>'
                   f'{e(s.replace("_", " "))}</option>' for s in STATUSES)
    return (
        '<form class="filters" method="get" action="/">'
        + field("host", "host") + field("since", "since (UTC)", "text",
                                        'placeholder="2024-03-01T12:00"')
        + field("until", "until (UTC)", "text", 'placeholder="2024-03-02"')
        + f'<label>status<select name="status"><option value="">any</option>{opts}</select></label>'
        + field("event_id", "event id", "number", 'min="1" max="255"')
        + '<label>alerts<select name="alerts">'
        + f'<option value="outside"{"" if all_alerts else " selected"}>outside incidents</option>'
        + f'<option value="all"{" selected" if all_alerts else ""}>all</option></select></label>'
        + '<button type="submit">filter</button> ' + link("/", "clear") + "</form>")


def triage_list(incidents: list[dict], alerts: list[dict], raw: dict[str, str], *,
                all_alerts: bool, errors: Sequence[str], top: tuple[int, int],
                integrity: list[dict] | None = None) -> str:
    """``top``: how many incidents and alerts the store was asked for (to say when there were
    more)."""
    errs = "".join(f'<p class="error">{e(m)}</p>' for m in errors)
    inc_rows = [(Cell(incident_link(i["incident_id"])), i["computer"], i["root_image"],
                 ts(i["first_seen"]), ts(i["last_seen"]), i["events"], i["alerts"],
                 score(i["score"]), Cell(status(i["status"]))) for i in incidents]
    al_rows = [(Cell(alert_link(a["alert_id"])), a["computer"], a["event_id"], score(a["score"]),
                a["count"], ts(a["first_seen"]), ts(a["last_seen"]), Cell(status(a["status"])),
                cut(a["normalized"])) for a in alerts]

    def more(rows: list[dict], limit: int) -> str:
        return (f'<p class="muted">the first {limit} shown; narrow the filters to see the '
                "others</p>" if len(rows) >= limit else "")

    heading = "All alerts" if all_alerts else "Alerts outside any incident"
    none_outside = ("none: every alert matching the filters belongs to an incident above "
                    f"({link(query_url('/', {**raw, 'alerts': 'all'}), 'list them all')})")
    alerts_html = (table(("alert", "host", "event", "score", "count", "first seen", "last seen",
                          "status", "canonical text"), al_rows, empty="no alerts match",
                         classes=("", "", "num", "num", "num", "t", "t", "", "text"))
                   if al_rows or all_alerts else f'<p class="muted">{none_outside}</p>')
    return (
        "<h1>Triage</h1>" + errs + filter_form(raw, all_alerts)
        + integrity_section(integrity or [])
        + f"<h2>Incidents ({len(incidents)})</h2>"
        + table(("incident", "host", "root image", "first seen", "last seen", "events", "alerts",
                 "score", "status"), inc_rows, empty="no incidents match",
                classes=("", "", "text", "t", "t", "num", "num", "num", ""))
        + more(incidents, top[0])
        + f"<h2>{heading} ({len(alerts)})</h2>" + alerts_html + more(alerts, top[1]))


def integrity_section(rows: list[dict]) -> str:
    """The logs whose own record shows a hole (missing record ids, a cleared log, Sysmon
    stopped): quiet there does not mean clean, and the analyst must see that beside the alerts.
    Logs without such a finding are only counted."""
    if not rows:
        return ""
    bad = [r for r in rows if is_alarming(r.get("gaps") or 0, r.get("log_clear_count") or 0,
                                          r.get("sysmon_changes") or [])]
    body = table(("host", "channel", "first", "last", "records", "gaps (missing records)",
                  "log clears", "Sysmon changes", "input"),
                 ((r.get("computer"), r.get("channel"), ts(r.get("first_ts")),
                   ts(r.get("last_ts")), r.get("records"),
                   f"{r.get('gaps') or 0} ({r.get('missing_records') or 0})",
                   r.get("log_clear_count") or 0, _changes(r.get("sysmon_changes") or []),
                   r.get("import_path")) for r in bad),
                 empty="", classes=("", "", "t", "t", "num", "num", "num", "text", "text"))
    ok = len(rows) - len(bad)
    tail = (f'<p class="muted">{ok}{" other" if bad else ""} log{"s" if ok != 1 else ""} '
            "checked: no missing records, cleared log or Sysmon stop</p>" if ok else "")
    return f"<h2>Log integrity ({len(bad)} with findings)</h2>" + (body if bad else "") + tail


def _changes(changes: list[dict]) -> str:
    """Sysmon's own service and config events, in a few words each."""
    return "; ".join(f"{c.get('event_id')} {c.get('what') or c.get('State') or ''} "
                     f"{ts(c.get('ts'))}".strip() for c in changes[:5])


# -- one alert --------------------------------------------------------------------------------
def highlight(text: str, spans: Sequence[dict]) -> str:
    """The canonical text with its surprising spans marked. Spans count UTF-8 bytes (the entropy
    model reads bytes); each edge is moved back to a character boundary before slicing."""
    data = text.encode("utf-8")

    def boundary(i: int) -> int:
        i = max(0, min(int(i), len(data)))
        while 0 < i < len(data) and (data[i] & 0xC0) == 0x80:
            i -= 1
        return i

    out, pos = [], 0
    for s in sorted(spans, key=lambda s: int(s.get("start", 0))):
        a, b = boundary(s.get("start", 0)), boundary(s.get("end", 0))
        if a < pos or b <= a:
            continue  # overlapping or empty: keep the earlier one
        out.append(e(data[pos:a].decode("utf-8", "replace")))
        title = f"{s.get('bits_per_byte', '?')} bits/byte"
        out.append(f'<mark title="{e(title)}">{e(data[a:b].decode("utf-8", "replace"))}</mark>')
        pos = b
    out.append(e(data[pos:].decode("utf-8", "replace")))
    return "".join(out)


def lineage_tree(chain: Sequence[dict], own: dict) -> str:
    """The ancestor chain (nearest first, as enrich walks it) as a nested tree from the oldest
    ancestor down to the alert's own process, the way a process tree is drawn."""
    nodes = [*reversed(chain), own]

    def node(p: dict, is_own: bool) -> str:
        image = p.get("image") or (f"{p.get('process_guid')} ({p.get('note')})"
                                   if p.get("note") else p.get("process_guid") or "?")
        cmd = p.get("command_line")
        when = ts(p.get("ts"))
        return (f'<span class="{"own" if is_own else ""}">{e(image)}</span>'
                + (f' <span class="muted">{e(when)}</span>' if when else "")
                + (f"<br><code>{e(cut(cmd, 300))}</code>" if cmd else ""))

    html_ = ""
    for i, p in reversed(list(enumerate(nodes))):
        inner = f"<ul>{html_}</ul>" if html_ else ""
        html_ = f"<li>{node(p, i == len(nodes) - 1)}{inner}</li>"
    return f'<ul class="tree">{html_}</ul>'


def own_process(a: dict) -> dict:
    """The alert's own process, from its event's fields, as the tree's last node."""
    low = {str(k).lower(): v for k, v in (a.get("fields") or {}).items()}
    return {"image": low.get("image") or low.get("sourceimage") or f"event {a.get('event_id')}",
            "command_line": low.get("commandline"), "ts": a.get("ts")}


def alert_view(a: dict, expl: dict, text: str, why: Sequence[str], neighbours: Sequence[dict],
               hosts: Sequence[dict], *, csrf: str, enrich_note: str | None) -> str:
    aid = a["alert_id"]
    incidents = " ".join(incident_link(i) for i in a.get("incident_ids") or []) or "none"
    facts = [("score", score(a["score"]) + " (1.00 is the outlier threshold)"),
             ("status", Cell(status(a["status"]))), ("host", a.get("computer")),
             ("event id", a.get("event_id")), ("count", a.get("count")),
             ("first seen", ts(a.get("first_seen"))), ("last seen", ts(a.get("last_seen"))),
             ("model", a.get("model")), ("source", f"{a.get('source')} #{a.get('position')}"),
             ("incidents", Cell(incidents))]
    grid = "".join(f"<div>{e(k)}</div><div>{v if isinstance(v, Cell) else e(v)}</div>"
                   for k, v in facts)
    spans = expl.get("surprising_spans") or []
    near_base = [t for t in expl.get("nearest_baseline") or [] if t]
    cluster, medoid = expl.get("nearest_cluster"), expl.get("medoid")
    size = (expl.get("measures") or {}).get("cluster_size")
    cluster_html = (f"<p>nearest cluster <b>{e(cluster)}</b>"
                    + (f" ({e(size)} events)" if size is not None else "") + "</p>"
                    + (f'<pre class="canon">{e(medoid)}</pre>' if medoid else
                       '<p class="muted">no medoid: the shipped reference clusters carry no event '
                       "text; <code>sysmon-blt fit</code> on a baseline you trust gives each "
                       "cluster a typical text</p>")) if cluster is not None else (
        '<p class="muted">not scored against clusters</p>')
    hist = table(("when", "status", "analyst", "note"),
                 ((ts(h.get("at")), Cell(status(h.get("status"))), h.get("analyst"), h.get("note"))
                  for h in a.get("history") or []),
                 empty="no changes yet: open since it fired", classes=("t",))
    return (
        f"<h1>Alert {e(aid)}</h1>" + f'<div class="grid">{grid}</div>'
        + actions(f"/alerts/{aid}/mark", csrf)
        + "<h2>Canonical text</h2>"
        + f'<pre class="canon">{highlight(text, spans)}</pre>'
        + ('<p class="muted">marked: the most surprising byte spans to the entropy model '
           "(hover for bits per byte)</p>" if spans else
           '<p class="muted">no surprising spans computed for this text</p>')
        + (f'<p class="muted">{e(enrich_note)}</p>' if enrich_note else "")
        + "<h2>Why it stands out</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in why) + "</ul>"
        + "<h2>Process lineage</h2>"
        + lineage_tree(expl.get("process_lineage") or [], own_process(a))
        + "<h2>Cluster</h2>" + cluster_html
        + "<h2>Nearest stored events</h2>"
        + table(("similarity", "host", "time", "canonical text"),
                ((f"{float(n.get('similarity', 0)):.3f}", n.get("computer"), ts(n.get("ts")),
                  cut(n.get("normalized"), 300)) for n in neighbours),
                empty="no neighbours (no stored vectors for this model)",
                classes=("num", "", "t", "text"))
        + ("<h2>Nearest baseline texts</h2><ul>"
           + "".join(f"<li><code>{e(t)}</code></li>" for t in near_base) + "</ul>"
           if near_base else "")
        + "<h2>Hosts</h2>"
        + table(("host", "events with this text", "first", "last"),
                ((h["computer"], h["events"], ts(h["first_seen"]), ts(h["last_seen"]))
                 for h in hosts), empty="no stored events carry this text",
                classes=("", "num", "t", "t"))
        + "<h2>Status history</h2>" + hist
        + "<h2>Event fields</h2><details><summary>all parsed fields</summary>"
        + table(("field", "value"), sorted((k, v) for k, v in (a.get("fields") or {}).items()
                                           if not isinstance(v, dict)),
                empty="none", classes=("", "text")) + "</details>")


def actions(action: str, csrf: str) -> str:
    """One form, three buttons: each submits its status with the same note and analyst."""
    buttons = "".join(f'<button type="submit" name="status" value="{v}">{e(label)}</button>'
                      for v, label in ACTIONS)
    return (f'<h2>Verdict</h2><form class="actions" method="post" action="{e(action)}">'
            + hidden("csrf", csrf)
            + '<label>note<input type="text" name="note" size="40" maxlength="500"></label>'
            + '<label>analyst<input type="text" name="analyst" size="14" maxlength="100" '
            'placeholder="page"></label>' + buttons + "</form>")


# -- one incident -----------------------------------------------------------------------------
def incident_view(i: dict, *, csrf: str) -> str:
    """The incident whole, with the same verdict buttons as an alert's page: a verdict here
    marks the incident and every alert it lists."""
    facts = [("host", i["computer"]), ("root image", i["root_image"]),
             ("root process", i["root_guid"]), ("first seen", ts(i["first_seen"])),
             ("last seen", ts(i["last_seen"])), ("events", i["events"]),
             ("outliers", i["outliers"]), ("alerts", i["alerts"]), ("score", score(i["score"])),
             ("status", Cell(status(i["status"]))),
             ("event types", ", ".join(str(t) for t in i.get("event_types") or []))]
    grid = "".join(f"<div>{e(k)}</div><div>{v if isinstance(v, Cell) else e(v)}</div>"
                   for k, v in facts)
    alerts = table(("alert", "event", "score", "count", "last seen", "status", "canonical text"),
                   ((Cell(alert_link(a["alert_id"])), a["event_id"], score(a["score"]),
                     a["count"], ts(a["last_seen"]), Cell(status(a["status"])),
                     cut(a["normalized"], 200)) for a in i["alert_rows"]),
                   empty="no alerts", classes=("", "num", "num", "num", "t", "", "text"))
    events = table(("time", "event", "score", "outlier", "canonical text"),
                   ((ts(v["ts"]), v["event_id"], score(v["score"]),
                     "yes" if v["is_outlier"] else "", cut(v["normalized"], 240))
                    for v in i["event_rows"]),
                   empty="no events linked", classes=("t", "num", "num", "", "text"))
    hist = table(("when", "status", "analyst", "alerts marked", "note"),
                 ((ts(h.get("at")), Cell(status(h.get("status"))), h.get("analyst"),
                   h.get("alerts"), h.get("note")) for h in i.get("history") or []),
                 empty="no changes yet: open since it formed", classes=("t", "", "", "num"))
    return (f"<h1>Incident {e(i['incident_id'])}</h1>" + f'<div class="grid">{grid}</div>'
            + actions(f"/incidents/{i['incident_id']}/mark", csrf)
            + '<p class="muted">a verdict here is given to each of its alerts too</p>'
            + f"<h2>Alerts ({len(i['alert_rows'])})</h2>" + alerts
            + f"<h2>Events of its process tree ({len(i['event_rows'])}, in time order)</h2>"
            + events + "<h2>Status history</h2>" + hist)


# -- the rest ---------------------------------------------------------------------------------
def message(title: str, text: str) -> str:
    return f"<h1>{e(title)}</h1><p>{e(text)}</p><p>{link('/', 'back to the triage list')}</p>"


def login_view(next_path: str, error: str | None = None) -> str:
    err = f'<p class="error">{e(error)}</p>' if error else ""
    return (
        "<h1>Sign in</h1>" + err
        + '<form class="actions" method="post" action="/login">' + hidden("next", next_path)
        + '<label>service token<input type="password" name="token" autocomplete="current-password"'
        ' autofocus required size="40"></label><button type="submit">sign in</button></form>'
        '<p class="muted">The token is the <code>service_token</code> setting '
        "(or SYSMON_BLT_SERVICE_TOKEN) the service was started with.</p>")


def report_missing(db: str, configured: str | None) -> str:
    where = (f"<p>The configured folder <code>{e(configured)}</code> holds no "
             "<code>report.html</code> yet.</p>" if configured else
             "<p>No report folder is configured.</p>")
    return (
        "<h1>Comparison report</h1>" + where
        + "<p>Write one with</p><pre class=\"canon\">"
        + e(f"sysmon-blt report --db {db} --out report/") + "</pre>"
        + "<p>and name its folder in the <code>service_report_dir</code> setting (config file, or "
          "SYSMON_BLT_SERVICE_REPORT_DIR=report/) before starting the service; this link then "
          "serves its <code>report.html</code>. The database is open in the service: DuckDB "
          "allows one process, so stop the service while <code>report</code> runs.</p>")
