"""The enricher answers as it did before its caches and without its lock (issue 15): the same
cluster, score, explanation and neighbours as the one-request-at-a-time computation that asked
the store for everything, whether requests come one by one, from 8 threads at once, for a text
it has seen before, or after the store gained or lost events."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import orjson
import pytest

from plugin.cli import main
from plugin.resources import default_model_dir

pytestmark = pytest.mark.skipif(not (default_model_dir() / "config.json").is_file(),
                                reason="no shipped model")

N_EVENTS, N_STORED = 1000, 800


def reference_enrich(store, embedder, loaded, explain, text, doc: dict) -> dict:
    """The enrichment as computed before the caches: one request at a time, a model pass per
    request, every lookup a query (the full scan of the vectors included)."""
    from plugin.detect.enrich import _process, alert_document, lineage
    from plugin.detect.lineage import guid
    from plugin.detect.scoring import event_score, explanation, score_texts
    from plugin.normalize.shapes import map_document, parse_and_map

    own_key = None
    if "alert_id" in doc and len(doc) <= 2:
        a = store.alert(str(doc["alert_id"]))
        doc = alert_document(a["raw"], a["alert_id"], a.get("incident_ids"))
        ev, own_key = parse_and_map(a["raw"]), a["event_key"]
    else:
        ev = map_document(doc)
    canonical = text.build(ev)
    vec = embedder.embed([canonical])[0]
    block: dict[str, Any] = {"model": embedder.name, "model_version": embedder.version,
                             "normalized": canonical}
    chain = lineage(store, ev.fields)
    ts = score_texts(loaded.scorer, vec[None, :], [canonical])[0]
    context = loaded.context
    keys = [p["event_key"] for p in chain if p.get("event_key")]
    if ev.event_id != 1:
        low = {str(k).lower(): v for k, v in ev.fields.items()}
        actor = _process(store, guid(low.get("processguid") or low.get("sourceprocessguid")))
        if actor is not None:
            keys.append(actor["event_key"])
    carry = 0.0
    for d in store.assignment_details(embedder.name, keys):
        if "content_score" in d:
            carry = max(carry, context.own(d["content_score"], d.get("novel_images") or []))
    cs = context.combine(ts.score, context.novel(canonical), carry)
    scored = event_score(ts, context, cs)
    block.update(cluster=ts.cluster, score=scored.score, is_outlier=scored.is_outlier,
                 fit_version=loaded.version)
    block["explanation"] = explanation(explain, canonical, ts, scored, chain)
    if own_key is None:
        own_key = ev.key(orjson.dumps(doc))
    block["neighbors"] = store.nearest_events(embedder.name, embedder.version, vec,
                                              exclude_event=own_key)
    return {**doc, "sysmon_blt": orjson.loads(orjson.dumps(
        block, option=orjson.OPT_SERIALIZE_NUMPY))}


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal, floats within 1e-6."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, set(got) ^ set(want))
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, (int, float)), (where, got, want)
        assert math.isclose(got, want, abs_tol=1e-6), (where, got, want)
    else:
        assert got == want, (where, got, want)


def plain(doc: dict) -> dict:
    """As the service and the CLI write it (datetimes as strings)."""
    return orjson.loads(orjson.dumps(doc, default=str))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fitted and rescored store of the first 800 simulated events (so lineage carries), the
    rest of that simulation (ancestors stored, events not), and the model pieces."""
    from plugin import simulate
    from plugin.config import Config
    from plugin.detect.explain import make_explainer
    from plugin.detect.fitting import load_scorer
    from plugin.normalize.schema import load_schemas
    from plugin.normalize.text import CanonicalText
    from plugin.pipeline.assemble import load_embedder
    from plugin.store import open_store

    d = tmp_path_factory.mktemp("enrich")
    events = [simulate.render(e, "winlogbeat8") for e in
              simulate.generate(N_EVENTS, seed=5, anomaly_rate=0.05)]
    base, rest = d / "base.jsonl", d / "rest.jsonl"
    base.write_bytes(b"\n".join(orjson.dumps(e) for e in events[:N_STORED]))
    rest.write_bytes(b"\n".join(orjson.dumps(e) for e in events[N_STORED:]))
    db = d / "e.duckdb"
    for cmd in (["import", str(base)], ["fit"], ["rescore"]):
        assert main([*cmd, "--db", str(db), "-q"]) == 0
    embedder = load_embedder(None)
    store = open_store(db)
    loaded = load_scorer(store, embedder.name, embedder.version, None, record=False,
                         embedder=embedder)
    assert loaded is not None and loaded.context is not None
    explain = make_explainer(loaded, embedder, store.texts_by_hash)
    text = CanonicalText(load_schemas(Config(db=str(db)).schemas_dir))
    yield {"db": db, "store": store, "embedder": embedder, "loaded": loaded, "explain": explain,
           "text": text, "events": events, "rest": rest}
    store.close()


def requests_for(w) -> list[dict]:
    """Events not stored whose ancestors are, stored events in another shape (their own key is
    stored: excluded from their neighbours), stored alerts by id, and another fleet's events."""
    from plugin import simulate

    store = w["store"]
    raws = [r[0] for r in store.con.execute(
        "SELECT raw FROM events WHERE event_id IN (1, 3, 10, 11, 13) ORDER BY event_key "
        "LIMIT 12").fetchall()]
    alerts = [a["alert_id"] for a in store.list_alerts(top=8)]
    other = [simulate.render(e, "nxlog") for e in simulate.generate(30, seed=9, anomaly_rate=0.1)]
    return ([*w["events"][N_STORED:N_STORED + 40], *[orjson.loads(r) for r in raws],
             *[{"alert_id": a} for a in alerts], *other[:15]])


def test_cached_concurrent_enrichment_matches_the_one_request_at_a_time_answer(world):
    w = world
    store = w["store"]
    reqs = requests_for(w)
    want = [plain(reference_enrich(store, w["embedder"], w["loaded"], w["explain"], w["text"], r))
            for r in reqs]
    blocks = [x["sysmon_blt"] for x in want]
    # the requests reach the branches that read the store: stored ancestors and a lineage carry
    assert any(p.get("image") for b in blocks for p in b["explanation"]["process_lineage"])
    assert any((b["explanation"].get("context") or {}).get("lineage_context") for b in blocks)

    enricher = _enricher(w)
    for r, x in zip(reqs, want):  # one by one: every text new to it
        assert_same(plain(enricher.enrich(r)), x)
    with ThreadPoolExecutor(8) as pool:  # 8 at once, twice over: every text known
        got = list(pool.map(lambda r: plain(enricher.enrich(r)), reqs * 2))
    for i, g in enumerate(got):
        assert_same(g, want[i % len(reqs)], f"request {i}")
    fresh = _enricher(w)
    with ThreadPoolExecutor(8) as pool:  # 8 at once on an empty cache: threads share nothing
        got = list(pool.map(lambda r: plain(fresh.enrich(r)), reqs))
    for g, x in zip(got, want):
        assert_same(g, x)


def _enricher(w):
    from plugin.config import Config
    from plugin.detect.enrich import Enricher
    from plugin.normalize.schema import load_schemas

    return Enricher.for_store(w["store"], w["embedder"], default_model_dir(),
                              load_schemas(Config(db=str(w["db"])).schemas_dir))


def test_the_enricher_follows_the_store_as_it_grows_and_is_pruned(world):
    w = world
    store = w["store"]
    enricher = _enricher(w)
    reqs = w["events"][N_STORED:N_STORED + 25]
    for r in reqs:  # known texts, neighbours kept for them
        enricher.enrich(r)

    def check() -> None:
        for r in reqs:
            want = reference_enrich(store, w["embedder"], w["loaded"], w["explain"], w["text"], r)
            assert_same(plain(enricher.enrich(r)), plain(want))

    # the rest of the simulation arrives (as `consume` would write it): the requests' own
    # events are now stored, new process creations extend their lineage
    before = store.event_count()
    assert main(["import", str(w["rest"]), "--db", str(w["db"]), "-q"]) == 0
    assert store.event_count() > before
    check()
    # retention drops the older half: the in-memory copies read the store again
    first, last = store.con.execute("SELECT min(ts), max(ts) FROM events").fetchall()[0]
    counts = store.prune(first + (last - first) / 2)
    assert counts["events"] > 0
    check()
    assert store.prune(last + timedelta(days=1))["events"] > 0  # nothing left to neighbour
    check()
