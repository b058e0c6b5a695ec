"""One HTTP app: `POST /enrich`, `POST /feedback`, `GET /healthz`, `GET /metrics`, the triage page
at `/` (`plugin.service.page`) and FastAPI's OpenAPI page at /docs, hosted inside the consumer
(`consume --serve`) or on its own (`serve`).

Inside the consumer the app shares the consumer's store through a connection of its own
(`Store.for_thread`): a DuckDB file has one writing process, so whoever holds it serves it.
Requests are answered on uvicorn's threads. `POST /enrich` runs without a lock: the enricher
gives every thread its own store connection and its own view of the models
(`plugin.detect.enrich`), so enrichments overlap (model passes and DuckDB queries release the
GIL) instead of queueing behind one another, which is what kept 8 concurrent clients at ~400 ms
each. The page and the feedback endpoints share the app's one connection, and one lock lets one
of them at a time use it (a DuckDB connection is not to be shared by threads at once). Every
request passes the token gate (`plugin.service.auth`) and the body limit
(`plugin.service.limits`) first, in that order: a client without the token never gets to send a
large body.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import generate_latest
from pydantic import BaseModel, ValidationError, model_validator

from plugin.detect.enrich import Enricher
from plugin.service.auth import Auth, TokenGate
from plugin.service.feedback import BadVerdict, mark, mark_incident
from plugin.service.limits import (DEFAULT_MAX_BODY, BodyLimit, json_body, json_schema_body,
                                   validation_errors)
from plugin.service.page import is_form_post, page_router
from plugin.store import AlertNotFound, IncidentNotFound, Store
from plugin.stream.metrics import StreamMetrics


@dataclass
class ServiceSettings:
    """What the config says about the service (`service_*` keys); the defaults serve loopback
    without a token."""

    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    report_dir: str | None = None


class Feedback(BaseModel):
    alert_id: str | None = None
    incident_id: str | None = None
    status: str
    note: str | None = None
    analyst: str = "api"

    @model_validator(mode="after")
    def _one_target(self) -> "Feedback":
        # a verdict on both at once would leave unclear which one the note explains
        if (self.alert_id is None) == (self.incident_id is None):
            raise ValueError("give exactly one of alert_id or incident_id")
        return self


def _json(content: Any, status: int = 200) -> Response:
    # orjson: numpy values and datetimes in enrichment blocks serialize as the CLI prints them,
    # written once (a JSONResponse would read them back and write them again with json.dumps)
    return Response(orjson.dumps(content, default=str, option=orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status, media_type="application/json")


def build_app(store: Store, enricher: Enricher, metrics: StreamMetrics,
              settings: ServiceSettings | None = None) -> FastAPI:
    """The app over ``store`` (a connection for this thread) and an enricher on that same store
    (models loaded by the caller)."""
    settings = settings or ServiceSettings()
    app = FastAPI(title="sysmon-blt", description="Alert enrichment and triage feedback for "
                  "Sysmon events scored by a Byte Latent Transformer.")
    auth = Auth(settings.token)
    lock = threading.Lock()
    app.add_exception_handler(RequestValidationError, validation_errors)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body)
    app.add_middleware(TokenGate, auth=auth, is_form_post=is_form_post)  # outermost: runs first
    metrics.models_loaded()

    @app.get("/healthz")
    def healthz() -> Response:
        state = metrics.ready()
        return _json(state, 200 if state["ready"] else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/enrich", openapi_extra=json_schema_body(
        {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}))
    def enrich(doc: Any = Depends(json_body)) -> Response:
        """One alert (any event shape `import` reads, or {"alert_id": ...}) or a list of them;
        the same JSON back with a `sysmon_blt` block. 422 when a record cannot be enriched,
        400 when the body is not JSON."""
        docs = doc if isinstance(doc, list) else [doc]
        out = [enricher.enrich(d) if isinstance(d, dict)
               else {"sysmon_blt": {"error": "an alert must be a JSON object"}} for d in docs]
        bad = any("error" in o["sysmon_blt"] for o in out)
        return _json(out if isinstance(doc, list) else out[0], 422 if bad else 200)

    @app.post("/feedback", openapi_extra=json_schema_body(Feedback.model_json_schema()))
    def feedback(doc: Any = Depends(json_body)) -> Response:
        """Mark an alert, or an incident and every alert it holds, false_positive, suppressed or
        open; kept with who, when and why."""
        try:
            fb = Feedback.model_validate(doc)
        except ValidationError as exc:
            raise HTTPException(422, orjson.loads(exc.json(include_url=False))) from None
        try:
            if fb.incident_id is not None:
                return _json(mark_incident(store, lock, fb.incident_id, fb.status, fb.note,
                                           fb.analyst, via="api"))
            return _json(mark(store, lock, fb.alert_id, fb.status, fb.note, fb.analyst, via="api"))
        except (AlertNotFound, IncidentNotFound) as exc:
            raise HTTPException(404, str(exc)) from exc
        except BadVerdict as exc:
            raise HTTPException(422, str(exc)) from exc

    app.include_router(page_router(store, enricher, auth, lock, report_dir=settings.report_dir))
    return app
