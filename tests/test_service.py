"""The HTTP app on its own (FastAPI's test client, a real store): what SOAR integrators call."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from plugin import simulate
from plugin.cli import main


@pytest.fixture(scope="module")
def app_and_store(tmp_path_factory):
    from plugin.config import Config
    from plugin.cli.stream import service_app
    from plugin.pipeline.assemble import load_embedder
    from plugin.store import open_store
    from plugin.stream.metrics import StreamMetrics

    d = tmp_path_factory.mktemp("service")
    src, db = d / "events.jsonl", d / "svc.duckdb"
    simulate.write_jsonl(str(src), 1500, seed=5, anomaly_rate=0.05)
    assert main(["import", str(src), "--db", str(db), "-q"]) == 0
    store = open_store(db)
    metrics = StreamMetrics(needs_group=False)
    app = service_app(store, Config(db=str(db)), load_embedder(None), metrics)
    yield TestClient(app), store, metrics
    store.close()


def test_healthz_and_metrics(app_and_store):
    client, _, metrics = app_and_store
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["ready"] is True
    metrics.records_in.inc(7)
    body = client.get("/metrics").text
    assert "sysmon_blt_records_in_total 7.0" in body and "sysmon_blt_batch_seconds_bucket" in body


def test_healthz_is_not_ready_before_the_group_joins():
    from plugin.stream.metrics import StreamMetrics

    m = StreamMetrics()
    m.models_loaded()
    assert m.ready()["ready"] is False
    m.joined()
    assert m.ready()["ready"] is True


def test_enrich_an_alert_and_bad_input(app_and_store):
    client, store, _ = app_and_store
    a = store.list_alerts(top=1)[0]
    r = client.post("/enrich", json={"alert_id": a["alert_id"]})
    assert r.status_code == 200
    blk = r.json()["sysmon_blt"]
    assert blk["is_outlier"] is True and blk["neighbors"]
    assert a["event_key"] not in [n["event_key"] for n in blk["neighbors"]]
    r = client.post("/enrich", json=[{"alert_id": a["alert_id"]}, {"foo": 1}])
    assert r.status_code == 422 and "error" in r.json()[1]["sysmon_blt"]


def test_feedback_marks_and_keeps_who(app_and_store):
    client, store, _ = app_and_store
    a = store.list_alerts(status="open", top=1)[0]
    r = client.post("/feedback", json={"alert_id": a["alert_id"], "status": "suppressed",
                                       "note": "noisy agent", "analyst": "carol"})
    assert r.status_code == 200 and r.json()["previous_status"] == "open"
    got = store.alert(a["alert_id"])
    assert got["status"] == "suppressed" and got["history"][-1]["analyst"] == "carol"
    assert client.post("/feedback", json={"alert_id": "zzzz", "status": "open"}).status_code == 404
    assert client.post("/feedback", json={"alert_id": a["alert_id"], "status": "gone"}).status_code == 422
