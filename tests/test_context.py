"""Context scoring: image-path prevalence and process-tree lineage on top of content scores."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from plugin.detect.context import (ContextModel, ContextScorer, calibration_groups, fit_context,
                                   image_paths, score_events)

PAYLOAD = "c:\\users\\<user>\\downloads\\dropper.exe"
CMD = "c:\\windows\\system32\\cmd.exe"
CONHOST = "c:\\windows\\system32\\conhost.exe"
LOAD = f"eid=7 image={CONHOST} imageloaded=c:\\windows\\system32\\kernel32.dll signed=true"


def create(guid: str, parent: str, image: str) -> tuple[int, dict, str]:
    return 1, {"ProcessGuid": "{" + guid + "}", "ParentProcessGuid": "{" + parent + "}"}, \
        f"eid=1 image={image} commandline={image} parentimage=x"


def test_image_paths_reads_every_image_key_and_stops_at_the_next_key():
    text = ("eid=10 sourceimage=c:\\program files (x86)\\app\\a b.exe targetimage=c:\\windows\\"
            "system32\\lsass.exe grantedaccess=0x1010")
    assert image_paths(text) == {"c:\\program files (x86)\\app\\a b.exe", "c:\\windows\\system32\\lsass.exe"}
    assert image_paths(LOAD) == {CONHOST, "c:\\windows\\system32\\kernel32.dll"}
    assert image_paths("eid=22 queryname=example.com") == set()


def test_an_ordinary_text_under_a_suspicious_process_is_raised_and_its_twin_is_not():
    seen = frozenset({CMD, CONHOST, "c:\\windows\\system32\\kernel32.dll", "x"})
    model = ContextModel(seen, threshold=2.0, novelty_weight=1.0, lineage_weight=0.5)
    sc = ContextScorer(model)
    root = sc.score(*create("a1", "a0", PAYLOAD), content=3.0)  # new binary, odd text
    assert root.novel_images == [PAYLOAD] and root.raw == pytest.approx(4.0)
    child = sc.score(*create("a2", "a1", CMD), content=0.2)  # cmd.exe under the payload
    assert child.lineage == pytest.approx(4.0)
    inside = sc.score(7, {"ProcessGuid": "{A2}"}, LOAD, content=0.1)  # GUID case and braces vary
    assert inside.lineage == pytest.approx(4.0) and inside.score >= 1.0
    # the same text in an unrelated process stays ordinary
    sc.score(*create("b2", "b0", CMD), content=0.2)
    twin = sc.score(7, {"ProcessGuid": "{b2}"}, LOAD, content=0.1)
    assert twin.lineage == pytest.approx(0.2) and twin.score == pytest.approx(0.1)
    # a monitor opening the payload's process is part of its story (target GUID)
    acc = sc.score(10, {"SourceProcessGUID": "{c9}", "TargetProcessGUID": "{a1}"},
                   f"eid=10 sourceimage={CMD} targetimage={PAYLOAD}", content=0.3)
    assert acc.lineage == pytest.approx(4.0) and acc.novel_images == [PAYLOAD]
    # unreadable or missing GUIDs: still scored on content and prevalence
    assert sc.score(7, {}, LOAD, content=0.4).score == pytest.approx(0.2)


def test_process_memory_is_bounded():
    sc = ContextScorer(ContextModel(frozenset(), threshold=1.0), max_processes=3)
    for i in range(10):
        sc.score(*create(f"p{i}", "root", CMD), content=1.0)
    assert len(sc.carry._carry) == 3


def test_fit_context_counts_novelty_leave_one_group_out_and_calibrates_the_quantile():
    shared, own_a = "c:\\windows\\system32\\svchost.exe", "c:\\tools\\only_on_a.exe"
    texts = [f"eid=7 image={shared}"] * 90 + [f"eid=7 image={own_a}"] * 10
    groups = ["host-b"] * 80 + ["host-a"] * 20  # svchost on both hosts, one tool on host-a only
    content = np.linspace(0.0, 0.5, 100)
    m = fit_context([7] * 100, [{}] * 100, texts, groups, content, quantile=0.9,
                    lineage_weight=0.0, calibration="computer")
    expected_raw = content + np.array([0.0] * 90 + [1.0] * 10)
    assert m.threshold == pytest.approx(float(np.quantile(expected_raw, 0.9)))
    assert m.images == {shared, own_a}  # every baseline path is known when scoring
    assert m.novel(f"eid=7 image={own_a}") == [] and m.novel("eid=1 image=c:\\new.exe") == ["c:\\new.exe"]
    again = ContextModel.from_params(json.loads(json.dumps(m.to_params())))
    assert again == m
    with pytest.raises(ValueError, match="differ in length"):
        fit_context([7], [{}], texts, groups, content)


def test_calibration_groups_prefer_hosts_then_inputs_then_time():
    assert calibration_groups(["a", "b", "a"], ["f", "f", "f"])[1] == "computer"
    assert calibration_groups(["a", "a"], ["f", "g"]) == (["f", "g"], "source")
    groups, how = calibration_groups([None] * 10, ["f"] * 10)
    assert how == "time" and groups == [0] * 8 + [1] * 2


def test_score_events_matches_the_scorer_event_by_event():
    model = ContextModel(frozenset({CMD}), threshold=1.5)
    evs = [create("a1", "a0", PAYLOAD), create("a2", "a1", CMD), (7, {"ProcessGuid": "a2"}, LOAD)]
    content = np.array([2.0, 0.1, 0.1])
    got = score_events(model, [e[0] for e in evs], [e[1] for e in evs], [e[2] for e in evs], content)
    sc = ContextScorer(model)
    assert got.tolist() == [sc.score(*e, content=c).score for e, c in zip(evs, content)]


class _Scorer:
    """A content scorer with fixed scores per text, for the stage test."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.needs_text = True

    def score(self, vectors, texts):
        from plugin.detect.outliers import Scored

        s = np.array([self.scores[t] for t in texts])
        n = len(texts)
        return Scored(cluster=np.zeros(n, dtype=np.int64), distance=s, score=s, is_outlier=s >= 1.0,
                      detail=[{"scorer": "fixed"} for _ in texts])


class _Bits(_Scorer):
    """A content scorer that reports its measure as the surprisal scorer does (what the case
    calibration reads)."""

    def score(self, vectors, texts):
        res = super().score(vectors, texts)
        res.detail[:] = [{"window_bits_per_byte": self.scores[t]} for t in texts]
        return res


def _batch(rows, start: int = 0):
    """A batch of (event id, fields, text) rows, one host, keys k{start}.., every text with a
    vector of the model ``blt``."""
    from plugin.normalize.normalizer import NormalizedEvent
    from plugin.pipeline.batch import Batch

    ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    events = [NormalizedEvent(f"k{start + i}", "s", i, eid, "host", None, ts, i, None, "test", text,
                              hashlib.sha256(text.encode()).hexdigest(), json.dumps(f), "")
              for i, (eid, f, text) in enumerate(rows)]
    batch = Batch(events, [])
    batch.text_vectors["blt"] = {e.text_hash: np.zeros(4, dtype=np.float32) for e in events}
    return batch


def test_score_stage_applies_the_context_per_event_in_arrival_order():
    from plugin.pipeline.score import ScoreStage

    rows = [create("a1", "a0", PAYLOAD), create("a2", "a1", CMD), (7, {"ProcessGuid": "{a2}"}, LOAD),
            create("b2", "b0", CMD), (7, {"ProcessGuid": "{b2}"}, LOAD)]
    content = {rows[0][2]: 3.0, rows[1][2]: 0.2, LOAD: 0.1}
    batch = _batch(rows)
    model = ContextModel(frozenset({CMD, CONHOST, "c:\\windows\\system32\\kernel32.dll", "x"}), 2.0)
    stage = ScoreStage("blt", 1, _Scorer(content), context=model)
    stage(batch)
    by_key = {a["event_key"]: a for a in batch.assignments}
    assert [by_key[f"k{i}"]["is_outlier"] for i in range(5)] == [True, True, True, False, False]
    assert all((a["score"] >= 1.0) == a["is_outlier"] for a in batch.assignments)
    detail = json.loads(by_key["k2"]["detail"])
    assert detail["content_score"] == pytest.approx(0.1) and detail["lineage_context"] == pytest.approx(4.0)
    assert stage.stats()["context"] is True


def test_rescore_streams_every_event_in_log_order_while_writing(tmp_path):
    """rescore reads from a second cursor in batches while each batch's scores are written on the
    main connection; every event must arrive once, in the order the import read them (the
    file's own order, not the records' timestamps), with its fields."""
    from plugin import simulate
    from plugin.cli import main
    from plugin.pipeline.rescore import rescore
    from plugin.store import open_store

    src = tmp_path / "e.jsonl"
    simulate.write_jsonl(str(src), 600, seed=3, anomaly_rate=0.0, shape="winlogbeat8")
    db = tmp_path / "r.duckdb"
    assert main(["import", str(src), "--db", str(db), "--no-embed", "-q"]) == 0
    seen = []

    def stage(batch):
        seen.extend((e.position, e.event_key, bool(e.fields)) for e in batch.events)
        batch.assignments.extend({"event_key": e.event_key, "model": "t", "version": 1, "cluster": 0,
                                  "distance": 0.0, "score": 0.5, "is_outlier": False, "detail": "{}",
                                  "explanation": None} for e in batch.events)

    store = open_store(str(db))
    try:
        res = rescore(store, [stage], batch_size=97)
        n = store.con.execute("SELECT count(*) FROM events").fetchall()[0][0]
        written = store.con.execute("SELECT count(*) FROM assignments WHERE model = 't'").fetchall()[0][0]
    finally:
        store.close()
    assert res["events"] == n == len(seen) == written == len({k for _, k, _ in seen})
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)
    assert all(has_fields for _, _, has_fields in seen)


def test_zero_guid_carries_nothing_between_unrelated_processes():
    zero = "00000000-0000-0000-0000-000000000000"
    model = ContextModel(frozenset({CMD, CONHOST, "c:\\windows\\system32\\kernel32.dll", "x"}),
                         threshold=2.0, novelty_weight=1.0, lineage_weight=0.5)
    sc = ContextScorer(model)
    # a suspicious process whose own GUID is unknown (all-zero)...
    bad = sc.score(*create(zero, "a0", PAYLOAD), content=3.0)
    assert bad.raw == pytest.approx(4.0)
    # ...must not raise an unrelated process whose parent is unknown too
    child = sc.score(*create("b2", zero, CMD), content=0.2)
    assert child.lineage == 0.0 and child.raw == pytest.approx(0.2)
    # nor any other event that merely carries the zero GUID
    other = sc.score(7, {"ProcessGuid": "{" + zero + "}"}, LOAD, content=0.1)
    assert other.lineage == 0.0
    acc = sc.score(10, {"SourceProcessGUID": "{c9}", "TargetProcessGUID": "{" + zero + "}"},
                   f"eid=10 sourceimage={CMD} targetimage={CMD}", content=0.1)
    assert acc.lineage == 0.0
    assert zero not in sc.carry._carry


def test_case_context_flags_a_binary_new_to_the_case_once_its_routine_is_seen():
    from plugin.detect.context import CaseContext

    cc = CaseContext(min_events=2)
    # before the case has shown min_events events, nothing is new: its routine is still arriving
    assert cc.walk("h", *create("p1", "p0", "c:\\early.exe"), content=0.1)[1] == []
    cc.walk("h", 7, {"ProcessGuid": "{p1}"}, LOAD, content=0.1)  # names conhost and kernel32
    raw, novel, carry = cc.walk("h", *create("p2", "p1", PAYLOAD), content=0.5)
    # own = content + novelty; its parent's own suspicion (0.1) comes with half its weight
    assert novel == [PAYLOAD] and carry == pytest.approx(0.1)
    assert raw == pytest.approx(0.5 + 1.0 + 0.5 * 0.1)
    # an image the case named before (here as a loading process) is not new, nor is a second run
    assert cc.walk("h", *create("p3", "p2", CONHOST), content=0.1)[1] == []
    assert cc.walk("h", *create("p4", "p1", PAYLOAD), content=0.1)[1] == []
    # the payload's child carries its suspicion: raw = own + 0.5 * carry
    raw, _, carry = cc.walk("h", 7, {"ProcessGuid": "{p3}"}, LOAD, content=0.1)
    assert carry == pytest.approx(1.5) and raw == pytest.approx(0.1 + 0.75)
    # a host is judged once it has shown its own routine, however many events the case holds
    assert cc.walk("other", *create("q1", "q0", "c:\\other.exe"), content=0.1)[1] == []
    cc.walk("other", 7, {"ProcessGuid": "{q1}"}, LOAD, content=0.1)
    assert cc.walk("other", *create("q2", "q1", "c:\\new.exe"), content=0.1)[1] == ["c:\\new.exe"]
    assert cc.describe()["novel_creations"] == 2


def test_case_context_threshold_is_its_quantile_and_never_below_one():
    from plugin.detect.context import CaseContext

    quiet = CaseContext(quantile=0.99)
    quiet.observe(np.full(1000, 0.3))
    assert quiet.threshold() == 1.0
    early = CaseContext(quantile=0.99, min_events=1000)
    early.observe(np.full(999, 3.0))  # too few events for a quantile: the content bar stands
    assert early.threshold() == 1.0
    early.observe(np.array([3.0]))
    assert early.threshold() == pytest.approx(3.0, abs=0.01)
    noisy = CaseContext(quantile=0.99)
    values = np.random.default_rng(1).uniform(0.0, 4.0, 20_000)
    noisy.observe(values)
    assert abs(noisy.threshold() - np.quantile(values, 0.99)) < 0.01


def test_cold_start_stage_lifts_a_new_binarys_tree_but_not_its_twins_elsewhere():
    """Without a fit the score stage learns the context from the case: the new binary's creation
    and its child's ordinary module load are outliers; the same load in a routine process is not."""
    from plugin.detect.calibration import CaseCalibration
    from plugin.pipeline.score import ScoreStage

    rows = []
    for i in range(500):  # the case's routine: cmd.exe runs, each loading kernel32
        rows += [create(f"r{i}", "e0", CMD), (7, {"ProcessGuid": f"{{r{i}}}"}, LOAD)]
    rows += [create("a1", "e0", PAYLOAD), create("a2", "a1", CONHOST),
             (7, {"ProcessGuid": "{a2}"}, LOAD), create("z1", "e0", CMD),
             (7, {"ProcessGuid": "{z1}"}, LOAD)]
    bits = {rows[0][2]: 0.3, LOAD: 0.5, rows[-5][2]: 0.6, rows[-4][2]: 0.3}
    batch = _batch(rows)
    stage = ScoreStage("blt", 0, _Bits(bits), case=CaseCalibration(1.0, min_events=100))
    stage(batch)
    by_key = {a["event_key"]: a for a in batch.assignments}
    n = len(rows)
    payload, child, child_load, twin_load = (by_key[f"k{n - 5}"], by_key[f"k{n - 4}"],
                                             by_key[f"k{n - 3}"], by_key[f"k{n - 1}"])
    assert json.loads(payload["detail"])["novel_images"] == [PAYLOAD]
    assert payload["is_outlier"] and child["is_outlier"] and child_load["is_outlier"]
    assert json.loads(child_load["detail"])["lineage_context"] > 1.0
    assert not twin_load["is_outlier"]
    assert sum(a["is_outlier"] for a in batch.assignments) == 3
    assert all((a["score"] >= 1.0) == a["is_outlier"] for a in batch.assignments)
    assert stage.stats()["calibration"]["novel_creations"] == 1
    stage.use_fit(1, _Bits(bits))  # a fit replaces the case's calibration and its context
    assert stage.case is None and stage.case_context is None


def test_cold_start_context_waits_for_the_case_and_then_only_adds_outliers():
    """Small batches (a folder of small captures): before the case calibration is warm events
    keep their content score; after it, until the context's own quantile is trusted, a content
    outlier stays one and the context flags only at the 2.0 bar (without this, 127 small attack
    captures had 14% of their events flagged)."""
    from plugin.detect.calibration import CaseCalibration
    from plugin.pipeline.score import ScoreStage

    odd = create("x1", "e0", CONHOST)  # an image the case knows (conhost loads kernel32)
    child = (11, {"ProcessGuid": "{x1}"}, "eid=11 image=c:\\odd.exe targetfilename=c:\\a.txt")
    bits = {create("r", "e0", CMD)[2]: 0.3, LOAD: 0.2, odd[2]: 1.2, child[2]: 0.8}
    stage = ScoreStage("blt", 0, _Bits(bits), case=CaseCalibration(1.0, min_events=100))

    def run(rows, start):
        batch = _batch(rows, start)
        stage(batch)
        return [(json.loads(a["detail"]), a["is_outlier"]) for a in batch.assignments]

    routine = [r for i in range(30) for r in (create(f"r{i}", "e0", CMD),
                                             (7, {"ProcessGuid": f"{{r{i}}}"}, LOAD))]
    first = run(routine, 0)  # 60 events: the case is not calibrated yet, content only
    assert all("context_score" not in d for d, _ in first)
    second = run(routine[:58] + [odd, child], 100)  # warm now; the context's quantile not yet
    (d_odd, out_odd), (d_child, out_child) = second[-2], second[-1]
    assert d_odd["context_outlier_bar"] == 2.0 and d_odd["content_score"] == pytest.approx(1.2)
    assert out_odd  # the content's verdict stands
    assert 1.0 < d_child["context_score"] < 2.0 and not out_child  # the context adds only at 2.0


def test_a_text_longer_than_the_model_reads_is_flagged_in_its_score():
    """The BLT embeds a canonical text's first ``max_bytes`` bytes: a longer text's score says
    how much of it the model saw (multi-byte characters counted as bytes); a shorter one's
    detail carries no flag."""
    from plugin.pipeline.score import ScoreStage

    short, long_ascii, long_wide = "cmd.exe /c dir", "powershell -enc " + "A" * 200, "é" * 60
    batch = _batch([(1, {}, short), (1, {}, long_ascii), (1, {}, long_wide)])
    stage = ScoreStage("blt", 1, _Scorer({short: 0.1, long_ascii: 0.2, long_wide: 0.3}),
                       embed_max_bytes=100)
    stage(batch)
    detail = {a["event_key"]: json.loads(a["detail"]) for a in batch.assignments}
    assert "truncated_for_embedding" not in detail["k0"]
    assert detail["k1"]["truncated_for_embedding"] == {"text_bytes": 216, "embedded_bytes": 100}
    assert detail["k2"]["truncated_for_embedding"] == {"text_bytes": 120, "embedded_bytes": 100}
