"""Scoring on arrival: cold start from shipped clusters, `fit` versions, alerts, `rescore`."""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest

from plugin.cli import main


@pytest.fixture(scope="module")
def model_dir(micro_model_dir):
    return micro_model_dir


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from plugin import simulate

    d = tmp_path_factory.mktemp("sim")
    simulate.write_jsonl(str(d / "base.jsonl"), 1500, seed=1, anomaly_rate=0.0, shape="winlogbeat8")
    simulate.write_jsonl(str(d / "test.jsonl"), 800, seed=2, anomaly_rate=0.05, shape="nxlog")
    return d


def run(capsys, *argv):
    rc = main([*map(str, argv), "--json", "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def q(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_fit_then_score_on_arrival(tmp_path, capsys, model_dir, sim):
    db = tmp_path / "s.duckdb"
    s = run(capsys, "import", sim / "base.jsonl", "--db", db, "--model", model_dir)
    assert s["embedded"] and not any(st.get("name", "").startswith("score:") for st in s["stages"])
    f = run(capsys, "fit", "--db", db, "--model", model_dir)
    assert f["version"] == 1 and f["baseline_events"] == 1500
    ctx = f["context"]  # prevalence + lineage learned from the baseline's events
    assert ctx["images"] and ctx["threshold"] > 0 and ctx["calibration"] in ("computer", "source", "time")
    s2 = run(capsys, "import", sim / "test.jsonl", "--db", db, "--model", model_dir)
    n_test = s2["new_events"]
    rows = q(db, "SELECT version, count(*), sum(CASE WHEN is_outlier THEN 1 ELSE 0 END), "
                 "min(score), bool_and((score >= 1.0) = is_outlier) FROM assignments "
                 "WHERE model = 'blt' GROUP BY 1")
    assert rows[0][0] == 1 and rows[0][1] == n_test and rows[0][4]
    assert s2["outliers"] == rows[0][2]
    details = [json.loads(r[0]) for r in q(db, "SELECT detail FROM assignments WHERE model = 'blt'")]
    assert all("context_score" in d and "content_score" in d for d in details)
    expl = q(db, "SELECT explanation FROM assignments WHERE model = 'blt' AND is_outlier LIMIT 1")
    if expl:
        e = json.loads(expl[0][0])
        assert e["threshold"] == 1.0 and "surprising_spans" in e and "nearest_baseline" in e
        alerts = q(db, "SELECT sum(count) FROM alerts")[0][0]
        assert alerts == s2["outliers"]
    # a second fit is a new version; rescore moves every assignment to it
    f2 = run(capsys, "fit", "--db", db, "--model", model_dir)
    assert f2["version"] == 2
    r = run(capsys, "rescore", "--db", db, "--model", model_dir)
    assert r["events"] == 1500 + n_test
    assert q(db, "SELECT DISTINCT version FROM assignments") == [(2,)]


def test_cold_start_scores_with_shipped_reference_clusters(tmp_path, capsys, model_dir, sim):
    from plugin.detect.reference import fit_reference

    md = tmp_path / "model"
    shutil.copytree(model_dir, md)
    texts = [f"eid=1 image=c:\\windows\\system32\\tool{i % 40}.exe" for i in range(400)]
    meta = fit_reference(md, texts, k=4)
    assert meta["k"] == 4
    db = tmp_path / "c.duckdb"
    s = run(capsys, "import", sim / "test.jsonl", "--db", db, "--model", md)
    assert q(db, "SELECT DISTINCT version FROM assignments") == [(0,)]
    assert q(db, "SELECT count(*) FROM assignments")[0][0] == s["new_events"]
    assert q(db, "SELECT origin FROM fits") == [("shipped",)]
    assert q(db, "SELECT DISTINCT medoid FROM clusters") == [("",)]  # no event text shipped
    # a tampered clusters file is refused
    f = next(md.glob("*clusters.safetensors"))
    f.write_bytes(f.read_bytes()[:-8] + b"tampered")
    assert main(["import", str(sim / "test.jsonl"), "--db", str(tmp_path / "d.duckdb"),
                 "--model", str(md), "-q"]) == 2


def test_enrich_returns_the_stored_twin_first_and_lineage(tmp_path, capsys, model_dir, sim):
    import orjson

    db = tmp_path / "e.duckdb"
    run(capsys, "import", sim / "base.jsonl", "--db", db, "--model", model_dir)
    run(capsys, "fit", "--db", db, "--model", model_dir)
    # an alert: one stored process-creation event, re-delivered in another shape (NXLog)
    from plugin import simulate

    ev = next(e for e in simulate.generate(1500, seed=1, anomaly_rate=0.0)
              if e.event_id == 1 and "ParentProcessGuid" in e.fields and e.record_id > 200)
    alert = simulate.render(ev, "nxlog")
    src = tmp_path / "alert.json"
    src.write_bytes(orjson.dumps(alert))
    assert main(["enrich", str(src), "--db", str(db), "--model", str(model_dir), "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    blk = out["sysmon_blt"]
    assert out["Hostname"] == alert["Hostname"]  # the original alert is kept
    assert set(blk) >= {"model", "model_version", "cluster", "score", "is_outlier", "explanation", "neighbors"}
    assert blk["neighbors"][0]["normalized"] == blk["normalized"]
    assert blk["neighbors"][0]["similarity"] > 0.999 and len(blk["neighbors"]) == 5
    lineage = blk["explanation"]["process_lineage"]
    assert lineage and lineage[0]["process_guid"] == ev.fields["ParentProcessGuid"].strip("{}").lower()
    # after a rescore under the fit, enrich gives the alert the score the pipeline stored
    # (content + prevalence + the lineage term from the stored ancestors)
    run(capsys, "rescore", "--db", db, "--model", model_dir)
    assert main(["enrich", str(src), "--db", str(db), "--model", str(model_dir), "-q"]) == 0
    blk = json.loads(capsys.readouterr().out)["sysmon_blt"]
    stored = q(db, f"SELECT a.score FROM assignments a JOIN events e USING (event_key) WHERE "
                   f"a.model = 'blt' AND e.record_id = {ev.record_id} AND e.event_id = 1")
    assert "context" in blk["explanation"] and blk["score"] == pytest.approx(stored[0][0], rel=1e-5)
    # a non-Sysmon object gets an error block, not a crash, and the exit code says so
    src.write_text('{"EventID": 4624, "Channel": "Security", "SourceName": "x"}')
    assert main(["enrich", str(src), "--db", str(db), "--model", str(model_dir), "-q"]) == 1
    assert json.loads(capsys.readouterr().out)["sysmon_blt"]["error"] == "not a Sysmon event"


def test_eval_reports_every_scorer_on_the_same_events(tmp_path, capsys, model_dir, sim):
    import orjson

    from plugin import simulate

    attack = tmp_path / "attack.jsonl"
    recs = [r for r in simulate.simulate_records(3000, seed=9, anomaly_rate=0.2, shape="winlogbeat8")
            if r["sysmon_blt_sim"]["anomaly"]]
    attack.write_bytes(b"\n".join(orjson.dumps(r) for r in recs))
    res = run(capsys, "eval", "--baseline", sim / "base.jsonl", "--test", sim / "test.jsonl",
              "--attack", attack, "--db", tmp_path / "ev.duckdb", "--model", model_dir)
    assert res["attack_events"] == len(recs) and res["baseline_events"] == 1500
    assert res["test_events"] == 800 + len(recs)
    names = set(res["scorers"])
    assert {"blt-knn", "blt-kmeans", "blt-surprisal", "blt-context", "tfidf-1nn", "tfidf-kmeans"} <= names
    for m in res["scorers"].values():
        assert 0.0 <= m["roc_auc"] <= 1.0 and 0.0 <= m["tpr_at_1pct_fpr"] <= 1.0
    assert main(["eval", "--baseline", str(sim / "base.jsonl"), "--test", str(sim / "test.jsonl"),
                 "--attack-seed", "(unclosed", "-q"]) == 2
    # another model on the same evaluation database: nothing is re-imported, yet the stored
    # events get this model's vectors (this used to fail: "texts have no blt vector")
    from plugin.resources import default_model_dir

    again = run(capsys, "eval", "--baseline", sim / "base.jsonl", "--test", sim / "test.jsonl",
                "--attack", attack, "--db", tmp_path / "ev.duckdb", "--model", default_model_dir(),
                "--no-anchors")
    assert again["test_events"] == res["test_events"] and "blt-context" in again["scorers"]


def test_shadow_runs_beside_the_primary_and_never_alerts(tmp_path, capsys, model_dir, sim):
    db = tmp_path / "sh.duckdb"
    s = run(capsys, "import", sim / "base.jsonl", "--db", db, "--model", model_dir)
    run(capsys, "fit", "--db", db, "--model", model_dir)
    s2 = run(capsys, "import", sim / "test.jsonl", "--db", db, "--model", model_dir)
    n = s["new_events"] + s2["new_events"]
    # one 'blt' and one 'linformer' vector per event, of the same fixed size
    assert q(db, "SELECT model, count(*), count(DISTINCT event_key) FROM event_vectors "
                 "GROUP BY 1 ORDER BY 1") == [("blt", n, n), ("linformer", n, n)]
    # after the fit, both models score every new event with their own fit version
    assert q(db, "SELECT model, version, count(*) FROM assignments GROUP BY ALL ORDER BY 1") == [
        ("blt", 1, s2["new_events"]), ("linformer", 1, s2["new_events"])]
    assert q(db, "SELECT DISTINCT model FROM alerts") in ([], [("blt",)])  # the shadow never alerts
    assert q(db, "SELECT count(*) FROM assignments WHERE model = 'linformer' AND explanation IS NOT NULL") == [(0,)]
    # what each model cost, per run, for the report
    runs = q(db, "SELECT model, events, texts_embedded FROM model_runs ORDER BY run_started, model")
    assert [r[0] for r in runs] == ["blt", "linformer"] * 2
    assert runs[0][1] == s["new_events"] and runs[1][2] == runs[0][2]


def test_shadow_sample_rate_and_off(tmp_path, capsys, model_dir, sim, monkeypatch):
    from plugin.pipeline.embed import sampled

    db = tmp_path / "half.duckdb"
    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "0.5")
    run(capsys, "import", sim / "base.jsonl", "--db", db, "--model", model_dir)
    hashes = [r[0] for r in q(db, "SELECT DISTINCT text_hash FROM events")]
    want = sorted(h for h in hashes if sampled(h, 0.5))
    assert 0.3 * len(hashes) < len(want) < 0.7 * len(hashes)
    assert sorted(r[0] for r in q(db, "SELECT text_hash FROM text_vectors WHERE model = 'linformer'")) == want
    assert q(db, "SELECT count(*) FROM text_vectors WHERE model = 'blt'") == [(len(hashes),)]
    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "0")
    db2 = tmp_path / "off.duckdb"
    run(capsys, "import", sim / "base.jsonl", "--db", db2, "--model", model_dir)
    assert q(db2, "SELECT DISTINCT model FROM text_vectors") == [("blt",)]
    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "1.5")
    assert main(["import", str(sim / "base.jsonl"), "--db", str(db2), "--model", str(model_dir), "-q"]) == 2


def test_rescore_walks_events_in_the_order_they_arrived_not_by_timestamp(tmp_path, capsys, monkeypatch):
    """`rescore` (and `fit`, `eval`) walk stored events in log order, and the context's lineage
    needs a parent before its children. Real captures tie on time (LSASS capture 01: 45,281
    events, 2,060 distinct UtcTime values) and go back in time within a file; ordering them by
    time then event key (a hash) put children before their parents and scored capture 01's cold
    start at TPR 0.098 on rescore against 0.271 on import. Here every record carries one time:
    a rescore must reproduce the import's scores exactly."""
    import orjson

    from plugin import simulate

    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "0")
    src = tmp_path / "s.jsonl"
    simulate.write_jsonl(str(src), 2500, seed=5, anomaly_rate=0.02)
    recs = [orjson.loads(line) for line in src.read_bytes().splitlines()]
    for r in recs:
        r["@timestamp"] = r["event"]["created"] = "2026-01-05T08:00:00.000Z"
        r["winlog"]["event_data"]["UtcTime"] = "2026-01-05 08:00:00.000"
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    db = tmp_path / "o.duckdb"
    run(capsys, "import", src, "--db", db)
    sql = ("SELECT event_key, score, is_outlier, detail::JSON->>'lineage_context' FROM assignments "
           "WHERE model = 'blt' ORDER BY event_key")
    imported = q(db, sql)
    assert len(imported) == 2500 and q(db, "SELECT count(DISTINCT ts) FROM events") == [(1,)]
    assert sum(float(r[3] or 0) > 0 for r in imported) > 100  # lineage carried down many trees
    run(capsys, "rescore", "--db", db)
    assert q(db, sql) == imported


def test_a_cold_start_import_settles_on_the_whole_case(tmp_path, capsys, monkeypatch):
    """Without a fit, an import walks the case a second time with the whole case's thresholds
    (`plugin.pipeline.settle`): the summary says so, every stored score is the second walk's,
    and no alert is left from the first walk that the second did not confirm. A second import
    into the same store settles over everything stored."""
    from plugin import simulate

    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "0")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    simulate.write_jsonl(str(a), 2500, seed=11, anomaly_rate=0.02)
    simulate.write_jsonl(str(b), 1200, seed=12, anomaly_rate=0.02)
    db = tmp_path / "s.duckdb"
    s = run(capsys, "import", a, "--db", db)
    assert s["settled"]["events"] == 2500 and s["seconds"] >= s["settled"]["seconds"] > 0
    cal = next(st for st in s["stages"] if st.get("name") == "score:blt")["calibration"]
    assert cal["whole_case"] is True and cal["case_events"] == 2500
    outlier_texts = q(db, "SELECT count(DISTINCT e.text_hash) FROM events e JOIN assignments a "
                          "USING (event_key) WHERE a.model = 'blt' AND a.is_outlier")[0][0]
    assert s["outliers"] == q(db, "SELECT count(*) FROM assignments WHERE model = 'blt' "
                                  "AND is_outlier")[0][0] > 0
    assert q(db, "SELECT count(*), count(*) FILTER (WHERE count = 0) FROM alerts "
                 "WHERE model = 'blt'") == [(outlier_texts, 0)]
    s2 = run(capsys, "import", b, "--db", db)
    assert s2["settled"]["events"] == 3700  # the whole store, walked twice
    # after a fit there is nothing to settle
    run(capsys, "fit", "--db", db)
    c = tmp_path / "c.jsonl"
    simulate.write_jsonl(str(c), 600, seed=13, anomaly_rate=0.02)
    s3 = run(capsys, "import", c, "--db", db)
    assert s3["new_events"] == 600 and s3["settled"] is None


def test_the_settled_walk_reads_no_vector_back_that_the_import_holds(tmp_path, capsys,
                                                                      monkeypatch):
    """The settle pass walks the case again with the import's own embedding caches: new ones
    read every vector back from the store and held a second copy beside the first."""
    from plugin import simulate
    from plugin.store.duckdb import DuckDBStore

    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "0")
    read = []
    real = DuckDBStore.read_vectors

    def counted(self, model, version, hashes):
        read.append(len(hashes))
        return real(self, model, version, hashes)

    monkeypatch.setattr(DuckDBStore, "read_vectors", counted)
    log = tmp_path / "a.jsonl"
    simulate.write_jsonl(str(log), 1500, seed=11, anomaly_rate=0.02)
    s = run(capsys, "import", log, "--db", tmp_path / "s.duckdb")
    assert s["settled"]["events"] == 1500
    assert sum(read) == 0


def test_the_settle_pass_leaves_a_model_that_does_not_settle_as_it_was(tmp_path, capsys,
                                                                      monkeypatch):
    """The shadow has no case calibration (it scores on its shipped clusters), so the second
    walk of a cold-start import scores it exactly as the first did: rewriting its rows was half
    of that walk's writes. Only the primary's rows are replaced, and the shadow's stay stored."""
    from plugin import simulate
    from plugin.store.duckdb import DuckDBStore

    monkeypatch.setenv("SYSMON_BLT_SHADOW_SAMPLE_RATE", "1")
    replaced: list[str] = []
    real = DuckDBStore._replace_assignments

    def recorded(self, tbl):
        replaced.extend(tbl.column("model").to_pylist())
        return real(self, tbl)

    monkeypatch.setattr(DuckDBStore, "_replace_assignments", recorded)
    log = tmp_path / "a.jsonl"
    simulate.write_jsonl(str(log), 1500, seed=11, anomaly_rate=0.02)
    db = tmp_path / "s.duckdb"
    s = run(capsys, "import", log, "--db", db)
    assert s["settled"]["events"] == 1500
    assert set(replaced) == {"blt"} and len(replaced) == 1500
    assert q(db, "SELECT model, count(*) FROM assignments GROUP BY model ORDER BY model") == [
        ("blt", 1500), ("linformer", 1500)]
