"""What a request body may be: at most ``max_bytes`` long, and JSON where the API expects JSON.

The service runs inside the consumer (`consume --serve`), so one careless or hostile client must
not be able to grow the consumer's memory: a body is refused (413) as soon as it is known to be
too large, by its Content-Length before anything is read, else while it streams in, at the first
chunk past the limit. Bodies under the limit are buffered (at most ``max_bytes``) and handed on.

JSON is parsed here rather than by FastAPI's body parameters, which answer malformed JSON with a
422 validation list and take a body sent without a JSON content type (``curl -d``) as a string.
A client that sent something that is not JSON gets a 400 that says so.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

DEFAULT_MAX_BODY = 1_048_576  # 1 MiB: a batch of a few hundred alerts for /enrich
#: how deep a body's JSON may nest. An event is a few levels deep; orjson reads 1,024 levels but
#: writes only 254, so a deeper body would be taken in and then fail when answered (a 500)
MAX_JSON_DEPTH = 64


def _refuse(status: int, detail: str) -> JSONResponse:
    # Connection: close, because the rest of the body is never read
    return JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` before they are read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _refuse(400, "Content-Length is not a number")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await self._too_large(scope, receive, send, int(declared))
                return
        if declared is None and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (GET, HEAD): nothing to count
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # a chunked body, or one longer than it declared
                await self._too_large(scope, receive, send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        log.warning("http_body_too_large", path=scope.get("path"), bytes=size,
                    limit=self.max_bytes)
        await _refuse(413, f"request body over the limit of {self.max_bytes} bytes "
                      "(service_max_body)")(scope, receive, send)


async def json_body(request: Request) -> Any:
    """The request's body as JSON (whatever its content type); 400 when empty or malformed.
    A FastAPI dependency of the JSON routes."""
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(400, "a JSON body is required")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"malformed JSON body: {exc}") from None
    if json_depth(doc, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise HTTPException(400, f"JSON body nested deeper than {MAX_JSON_DEPTH} levels")
    return doc


def json_depth(doc: Any, limit: int) -> int:
    """How deep ``doc`` nests (a scalar is 0), counted without recursion and no further than
    one level past ``limit``."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(doc, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            todo.extend((v, depth) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


async def validation_errors(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a request it could not validate, except where the body was not JSON at
    all (a route declaring a body parameter): that is the client's malformed input, a 400."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse({"detail": "malformed JSON body"}, status_code=400)
    return JSONResponse({"detail": orjson.loads(orjson.dumps(errors, default=str))},
                        status_code=422)


def json_schema_body(schema: dict) -> dict:
    """``openapi_extra`` for a route that reads its body through `json_body`: the OpenAPI page
    still documents what it takes."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


async def form_fields(request: Request) -> dict[str, str]:
    """A page form's fields (the first value of each). Parsed here because FastAPI's form
    parameters need python-multipart, which the project does not depend on for one small form;
    the body is already bounded by `BodyLimit`."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    raw = await request.body()
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"malformed form body: {exc}") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out
