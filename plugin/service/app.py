"""One HTTP app: `POST /enrich`, `POST /feedback`, `GET /healthz`, `GET /metrics` (and FastAPI's
OpenAPI page at /docs), hosted inside the consumer (`consume --serve`) or on its own (`serve`).

Inside the consumer the app shares the consumer's store through a connection of its own
(`Store.for_thread`): a DuckDB file has one writing process, so whoever holds it serves it.
Requests are answered on uvicorn's thread; the models are shared read-only with the consumer.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Body, FastAPI, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from pydantic import BaseModel

from plugin.detect.enrich import Enricher
from plugin.store import STATUSES, AlertNotFound, Store
from plugin.stream.metrics import StreamMetrics


class Feedback(BaseModel):
    alert_id: str
    status: str
    note: str | None = None
    analyst: str = "api"


def _json(content: Any, status: int = 200) -> JSONResponse:
    # orjson: numpy values and datetimes in enrichment blocks serialize as the CLI prints them
    return JSONResponse(orjson.loads(orjson.dumps(content, default=str,
                                                  option=orjson.OPT_SERIALIZE_NUMPY)),
                        status_code=status)


def build_app(store: Store, enricher: Enricher, metrics: StreamMetrics) -> FastAPI:
    """The app over ``store`` (a connection for this thread) and an enricher on that same store
    (models loaded by the caller)."""
    app = FastAPI(title="sysmon-blt", description="Alert enrichment and triage feedback for "
                  "Sysmon events scored by a Byte Latent Transformer.")
    metrics.models_loaded()

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        state = metrics.ready()
        return _json(state, 200 if state["ready"] else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/enrich")
    def enrich(doc: Any = Body(...)) -> JSONResponse:
        """One alert (any event shape `import` reads, or {"alert_id": ...}) or a list of them;
        the same JSON back with a `sysmon_blt` block. 422 when a record cannot be enriched."""
        docs = doc if isinstance(doc, list) else [doc]
        out = [enricher.enrich(d) if isinstance(d, dict)
               else {"sysmon_blt": {"error": "an alert must be a JSON object"}} for d in docs]
        bad = any("error" in o["sysmon_blt"] for o in out)
        return _json(out if isinstance(doc, list) else out[0], 422 if bad else 200)

    @app.post("/feedback")
    def feedback(fb: Feedback) -> JSONResponse:
        """Mark an alert false_positive, suppressed or open; kept with who, when and why."""
        if fb.status not in STATUSES:
            raise HTTPException(422, f"status must be one of {', '.join(STATUSES)}")
        try:
            return _json(store.mark_alert(fb.alert_id, fb.status, fb.note, fb.analyst))
        except AlertNotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    return app
