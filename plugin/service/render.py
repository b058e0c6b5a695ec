"""HTML building blocks of the triage page: escaping, the page frame, tables, time and score.

Plain strings rather than a template engine: the project has no template dependency of its own,
and the page is small. The one rule that keeps it safe: every value from the database or the
request goes through `e` (html.escape, quotes included) or is built by a helper here that does;
event text is attacker-controlled (a command line is whatever the attacker typed).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from fastapi.responses import HTMLResponse

#: no scripts at all; inline style only; forms post only here; never framed (clickjacking)
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header .brand{font-weight:600;color:#fff}
header form{margin-left:auto}main{padding:1em 1.4em;max-width:1400px}
h1{font-size:1.35em;margin:.3em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e3e6ec;padding:.35em .55em;text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600}td.t{white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
code,pre{font-family:ui-monospace,monospace;font-size:12.5px}
pre.canon{background:#fff;border:1px solid #d6dae2;padding:.7em;white-space:pre-wrap;
word-break:break-all}mark{background:#ffd24d;padding:0 1px}
.status{border-radius:3px;padding:0 .4em;font-size:12px;white-space:nowrap}
.status-open{background:#fde2e1;color:#8a1c17}.status-suppressed{background:#e6e8ec}
.status-false_positive{background:#dff3e4;color:#1c5e2e}
.filters{display:flex;gap:.8em;flex-wrap:wrap;align-items:end;background:#fff;padding:.7em;
border:1px solid #e3e6ec}.filters label{display:flex;flex-direction:column;font-size:12px}
.actions{display:flex;gap:.6em;align-items:end;flex-wrap:wrap;background:#fff;padding:.7em;
border:1px solid #e3e6ec}.actions label{display:flex;flex-direction:column;font-size:12px}
button{padding:.35em .9em;cursor:pointer}.muted{color:#667085}.error{background:#fde2e1;
padding:.6em;border:1px solid #f1a9a5}.grid{display:grid;grid-template-columns:max-content 1fr;
gap:.2em 1.2em;background:#fff;padding:.7em;border:1px solid #e3e6ec}
ul.tree,ul.tree ul{list-style:none;padding-left:1.2em;margin:0;border-left:1px dashed #b8bfcc}
ul.tree li{margin:.25em 0}ul.tree .own{font-weight:600}
"""


def e(value: Any) -> str:
    """A value as HTML text: escaped, quotes included (safe inside attributes), None as ''."""
    return "" if value is None else html.escape(str(value), quote=True)


def ts(value: datetime | str | None) -> str:
    """A stored time as the analyst compares them: UTC, to the second."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def score(value: float | None) -> str:
    return "" if value is None else f"{float(value):.2f}"


def status(value: str | None) -> str:
    v = value or ""
    return f'<span class="status status-{e(v)}">{e(v.replace("_", " "))}</span>'


def link(path: str, text: Any) -> str:
    return f'<a href="{e(path)}">{e(text)}</a>'


def alert_link(alert_id: str, short: bool = True) -> str:
    return link("/alerts/" + quote(alert_id, safe=""), alert_id[:12] if short else alert_id)


def incident_link(incident_id: str, short: bool = True) -> str:
    return link("/incidents/" + quote(incident_id, safe=""),
                incident_id[:12] if short else incident_id)


def query_url(path: str, params: dict[str, Any]) -> str:
    return path + ("?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})
                   if any(v not in (None, "") for v in params.values()) else "")


def cut(text: str | None, n: int = 160) -> str:
    t = text or ""
    return t if len(t) <= n else t[: n - 1] + "…"


class Cell(str):
    """HTML already built (by the helpers above); a plain value in a row is escaped."""


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str,
          classes: Sequence[str] = ()) -> str:
    """A table; ``classes`` per column (``num``, ``text``); ``empty`` when there are no rows."""
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = classes[i] if i < len(classes) and classes[i] else ""
            inner = v if isinstance(v, Cell) else e(v)
            cells.append(f'<td class="{cls}">{inner}</td>' if cls else f"<td>{inner}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


def frame(title: str, body: str, *, csrf: str | None = None, logout: bool = False,
          db: str | None = None) -> str:
    """The whole page: header with navigation (and a logout button when signed in), then
    ``body``, which the caller built from escaped values."""
    out = (f'<form method="post" action="/logout">{hidden("csrf", csrf or "")}'
           '<button type="submit">log out</button></form>') if logout else ""
    where = f'<span class="muted">{e(db)}</span>' if db else ""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)} · sysmon-blt</title><style>{_CSS}</style></head><body>"
        '<header><a class="brand" href="/">sysmon-blt triage</a>'
        '<a href="/report">comparison report</a><a href="/docs">API</a>'
        f"{where}{out}</header><main>{body}</main></body></html>")


def page(html_text: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(html_text, status_code=status_code, headers=HEADERS)
