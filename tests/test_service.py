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


@pytest.fixture(scope="module")
def small_limit_client(app_and_store):
    """The same store behind an app whose body limit is 64 bytes."""
    from plugin.config import Config
    from plugin.cli.stream import service_app
    from plugin.pipeline.assemble import load_embedder
    from plugin.stream.metrics import StreamMetrics

    _, store, _ = app_and_store
    return TestClient(service_app(store, Config(db=store.path, service_max_body=64),
                                  load_embedder(None), StreamMetrics(needs_group=False)))


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


def test_malformed_json_is_a_400_that_says_so(app_and_store):
    client, _, _ = app_and_store
    for path in ("/enrich", "/feedback"):
        r = client.post(path, content=b'{"alert_id": ',
                        headers={"content-type": "application/json"})
        assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
        r = client.post(path, content=b"", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON body is required" in r.json()["detail"]
    # a well-formed body that is not the expected object is still a validation error
    assert client.post("/feedback", json={"alert_id": 3}).status_code == 422


def test_deeply_nested_json_is_a_400_not_a_500(app_and_store):
    """A body nested 500 levels parses (orjson reads 1,024) but could never be written back:
    refused up front with the reason, and the service answers the next request."""
    client, store, _ = app_and_store
    a = store.list_alerts(top=1)[0]
    deep = '{"alert_id": "%s", "x": %s}' % (a["alert_id"], "[" * 500 + "]" * 500)
    for path in ("/enrich", "/feedback"):
        r = client.post(path, content=deep.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested deeper than 64" in r.json()["detail"], path
    shallow = {"alert_id": a["alert_id"], "x": [[[1]]]}
    assert client.post("/enrich", json=shallow).status_code in (200, 422)
    assert client.get("/healthz").status_code == 200


def test_json_sent_as_a_form_still_reads(app_and_store):
    """`curl -d '{...}'` without a content type sends a form header; the JSON still counts."""
    client, store, _ = app_and_store
    a = store.list_alerts(status="open", top=2)[-1]
    r = client.post("/feedback", content=('{"alert_id": "%s", "status": "suppressed"}'
                                          % a["alert_id"]).encode(),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and store.alert(a["alert_id"])["status"] == "suppressed"


def test_oversized_body_is_refused_with_413(small_limit_client):
    r = small_limit_client.post("/enrich", content=b"[" + b"{}," * 100 + b"{}]",
                                headers={"content-type": "application/json"})
    assert r.status_code == 413 and "64 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(10):
            yield b"x" * 20

    assert small_limit_client.post("/enrich", content=chunks()).status_code == 413
    assert small_limit_client.post("/enrich", json={"a": 1}).status_code == 422  # under the limit


def test_body_limit_stops_reading_at_the_first_chunk_over():
    """The limit is enforced while the body streams in: the chunks after the one that crosses it
    are never asked for, and the answer is a 413."""
    import asyncio

    from plugin.service.limits import BodyLimit

    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b"y" * 40, "more_body": True}  # endless

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app saw an oversized body")

    scope = {"type": "http", "method": "POST", "path": "/enrich",
             "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, max_bytes=100)(scope, receive, send))
    assert len(pulled) == 3 and sent[0]["status"] == 413
    sent.clear()
    scope["headers"] = [(b"content-length", b"1000000")]
    asyncio.run(BodyLimit(app, max_bytes=100)(scope, receive, send))
    assert len(pulled) == 3 and sent[0]["status"] == 413  # refused by its header, nothing read


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    """A supervisor (systemd, Docker) stops `serve` with SIGTERM and reads a non-zero exit as a
    failure: a requested stop must exit 0 (uvicorn re-raised the signal: 143)."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    src, db = tmp_path / "ev.jsonl", tmp_path / "s.duckdb"
    simulate.write_jsonl(str(src), 300, seed=2)
    assert main(["import", str(src), "--db", str(db), "--no-embed", "-q"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "plugin.cli", "serve", "--db", str(db),
                             "--port", str(port), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
