"""Who may use the service: an optional shared token, a browser session, and CSRF tokens.

Loopback is the default, and on loopback anyone with a shell on the machine could open the
database anyway; a service moved onto a network (or shared by a SOC team) sets ``service_token``.
Then every route but /healthz (a load balancer's probe) and /login asks for it:

* API clients send ``Authorization: Bearer <token>``; without it they get a JSON 401.
* A browser asks for it once on the login form; the server answers with a session cookie
  (HttpOnly: page scripts cannot read it; SameSite=Strict: another site's page cannot make the
  browser send it). The cookie holds a random session id signed with a per-process secret, never
  the token, so a copied cookie dies with the process and after `SESSION_SECONDS`.

The page's forms change alert statuses, so each carries a CSRF token: an HMAC of the session
cookie under the same secret, checked on POST. Without a configured token the page still gets an
anonymous session for that purpose: a form on another site must not be able to mark alerts on a
loopback service either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote

import structlog
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger(__name__)

COOKIE = "sysmon_blt_session"
SESSION_SECONDS = 12 * 3600  # an analyst's shift
OPEN_PATHS = frozenset({"/healthz", "/login"})


def _digest(value: str) -> bytes:
    # compared as fixed-length digests, so a comparison leaks neither content nor length
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class Auth:
    """The token (None: no login), the process's signing secret and the sessions it signed."""

    def __init__(self, token: str | None, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock
        self._revoked: set[str] = set()  # sessions logged out before they expired

    @property
    def required(self) -> bool:
        return self.token is not None

    def token_ok(self, given: str | None) -> bool:
        return (self.token is not None and given is not None
                and hmac.compare_digest(_digest(given), _digest(self.token)))

    def bearer_ok(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        sid = f"{int(self._clock())}.{secrets.token_urlsafe(18)}"
        return f"{sid}.{self._mac('session', sid)}"

    def session_ok(self, cookie: str | None) -> bool:
        sid, _, mac = (cookie or "").rpartition(".")
        issued, _, _ = sid.partition(".")
        if not sid or not issued.isdigit() or sid in self._revoked:
            return False
        if not hmac.compare_digest(mac, self._mac("session", sid)):
            return False
        return 0 <= self._clock() - int(issued) < SESSION_SECONDS

    def revoke(self, cookie: str | None) -> None:
        if self.session_ok(cookie):
            self._revoked.add((cookie or "").rpartition(".")[0])

    def csrf_for(self, cookie: str) -> str:
        return self._mac("csrf", cookie)

    def csrf_ok(self, cookie: str | None, given: str | None) -> bool:
        return (self.session_ok(cookie) and given is not None
                and hmac.compare_digest(_digest(given), _digest(self.csrf_for(cookie or ""))))

    def set_cookie(self, response: Response, cookie: str) -> None:
        # no Secure flag: the service speaks plain HTTP (on loopback by default); behind a TLS
        # proxy the proxy can add it
        response.set_cookie(COOKIE, cookie, max_age=SESSION_SECONDS, path="/", httponly=True,
                            samesite="strict")


class TokenGate:
    """ASGI middleware: with a token configured, lets through /healthz and /login, requests
    bearing the token, and a signed-in browser's GETs and page form POSTs (whose CSRF token the
    page route checks); everything else gets 401 (a browser asking for a page: the login form).

    A session cookie does not open the JSON API's POST routes: those are for API clients, and
    taking a cookie there would make them reachable by cross-site requests."""

    def __init__(self, app: ASGIApp, auth: Auth, is_form_post: Callable[[str], bool]) -> None:
        self.app = app
        self.auth = auth
        self.is_form_post = is_form_post

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.auth.required
                or scope["path"] in OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        if self.auth.bearer_ok(headers.get("authorization")):
            await self.app(scope, receive, send)
            return
        cookie = HTTPConnection(scope).cookies.get(COOKIE)
        if self.auth.session_ok(cookie) and (method in ("GET", "HEAD")
                                             or (method == "POST" and self.is_form_post(path))):
            await self.app(scope, receive, send)
            return
        log.info("http_unauthorized", method=method, path=path,
                 had_bearer="authorization" in headers, had_cookie=cookie is not None)
        if method in ("GET", "HEAD") and "text/html" in headers.get("accept", ""):
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + ("?" + query if query else "")
            response: Response = RedirectResponse("/login?next=" + quote(target, safe=""), 303)
        else:
            response = JSONResponse(
                {"detail": "this service needs its token: send 'Authorization: Bearer <token>' "
                 "(the service_token setting)"}, status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="sysmon-blt"'})
        await response(scope, receive, send)


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this server only (never ``//host`` or a URL), so the
    login form cannot be used to send an analyst elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
