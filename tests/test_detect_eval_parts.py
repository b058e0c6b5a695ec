"""Eval building blocks: process-tree labels, detection metrics, and the comparison anchors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from plugin.detect.anchors import Drain3Rarity, TfidfKMeans, TfidfNearestNeighbor
from plugin.detect.labels import LabelEvent, attack_tree_labels
from plugin.detect.lineage import guid
from plugin.detect.metrics import detection_metrics

# ---------------------------------------------------------------- process-tree labels

EXPLORER = "{AAAAAAAA-0000-0000-0000-000000000001}"
PAYLOAD = "{AAAAAAAA-0000-0000-0000-000000000002}"
CMD = "{AAAAAAAA-0000-0000-0000-000000000003}"
WHOAMI = "{AAAAAAAA-0000-0000-0000-000000000004}"
LSASS = "{AAAAAAAA-0000-0000-0000-000000000005}"
LSASS_CHILD = "{AAAAAAAA-0000-0000-0000-000000000006}"
SVCHOST = "{AAAAAAAA-0000-0000-0000-000000000007}"
RUNDLL = "{AAAAAAAA-0000-0000-0000-000000000008}"
NOTEPAD = "{AAAAAAAA-0000-0000-0000-000000000009}"


def _create(key: str, guid: str, parent: str, image: str, cmd: str = "") -> LabelEvent:
    return LabelEvent(key, {"ProcessGuid": guid, "ParentProcessGuid": parent, "Image": image,
                            "CommandLine": cmd or image}, event_id=1)


def _tree_events() -> list[LabelEvent]:
    return [
        # grandchild listed before its parent, and the parent before the payload's creation;
        # GUIDs in varying case, with and without braces; field names in varying case
        LabelEvent("e_whoami", {"processguid": WHOAMI.lower(), "PARENTPROCESSGUID": CMD.strip("{}"),
                                "image": r"C:\Windows\System32\whoami.exe", "commandline": "whoami /all"},
                   event_id=1),
        _create("e_cmd", CMD, PAYLOAD, r"C:\Windows\System32\cmd.exe", "cmd.exe /c whoami /all"),
        _create("e_payload", PAYLOAD, EXPLORER, r"C:\Users\bob\Downloads\winx64_payload.exe"),
        _create("e_notepad", NOTEPAD, EXPLORER, r"C:\Windows\notepad.exe"),
        # network event of a descendant: membership by ProcessGuid (no event_id, no ParentProcessGuid)
        LabelEvent("e_net", {"ProcessGuid": WHOAMI, "Image": r"C:\Windows\System32\whoami.exe",
                             "DestinationIp": "10.0.0.5"}),
        # ProcessAccess from the payload's tree to lsass: member by SourceProcessGUID
        LabelEvent("e_access", {"SourceProcessGUID": CMD.lower(), "TargetProcessGUID": LSASS,
                                "SourceImage": r"C:\Windows\System32\cmd.exe",
                                "TargetImage": r"C:\Windows\System32\lsass.exe"}, event_id=10),
        # lsass and its child: NOT in the tree although lsass is a Target above
        _create("e_lsass_child", LSASS_CHILD, LSASS, r"C:\Windows\System32\werfault.exe"),
        LabelEvent("e_lsass_file", {"ProcessGuid": LSASS, "Image": r"C:\Windows\System32\lsass.exe",
                                    "TargetFilename": r"C:\x.tmp"}, event_id=11),
        # the dump: started by svchost outside the payload's tree, seeded by its command line
        _create("e_svchost", SVCHOST, EXPLORER, r"C:\Windows\System32\svchost.exe"),
        _create("e_rundll", RUNDLL, SVCHOST, r"C:\Windows\System32\rundll32.exe",
                r"rundll32.exe C:\windows\System32\comsvcs.dll, MiniDump 624 C:\lsass.dmp full"),
        # CreateRemoteThread into the dumper: member by TargetProcessGuid (spelled Guid here)
        LabelEvent("e_thread", {"sourceProcessGuid": SVCHOST, "TargetProcessGuid": RUNDLL.lower()},
                   event_id=8),
        # EventID given as a field: a file event of the dumper
        LabelEvent("e_dumpfile", {"EventID": "11", "ProcessGuid": RUNDLL, "TargetFilename": r"C:\lsass.dmp"}),
    ]


def test_tree_grandchildren_order_membership_and_no_target_expansion():
    labels = attack_tree_labels(_tree_events(), r"winx64_payload|comsvcs\.dll.*MiniDump")
    assert labels == {"e_payload", "e_cmd", "e_whoami", "e_net", "e_access", "e_rundll", "e_thread",
                      "e_dumpfile"}


def test_tree_is_order_independent():
    events = _tree_events()
    seed = r"WINX64_PAYLOAD"  # case-insensitive
    expected = attack_tree_labels(events, seed)
    assert expected == attack_tree_labels(list(reversed(events)), seed)
    assert {"e_payload", "e_cmd", "e_whoami"} <= expected
    assert not {"e_lsass_child", "e_lsass_file", "e_notepad", "e_svchost", "e_rundll"} & expected


def test_seed_by_non_creation_image_and_empty_results():
    events = _tree_events() + [
        # payload's creation not in the capture: a later event's Image seeds its ProcessGuid
        LabelEvent("e_orphan_net", {"ProcessGuid": "{BBBBBBBB-0000-0000-0000-00000000000A}",
                                    "Image": r"C:\tmp\beacon.exe"}, event_id=3),
        _create("e_orphan_child", "{BBBBBBBB-0000-0000-0000-00000000000B}",
                "bbbbbbbb-0000-0000-0000-00000000000a", r"C:\Windows\System32\net.exe"),
    ]
    assert attack_tree_labels(events, r"beacon\.exe") == {"e_orphan_net", "e_orphan_child"}
    assert attack_tree_labels(events, "no-such-process") == set()
    assert attack_tree_labels([], "x") == set()


def test_zero_guid_never_joins_a_tree():
    zero = "{00000000-0000-0000-0000-000000000000}"
    events = [
        _create("seed", zero, EXPLORER, r"C:\evil.exe"),
        _create("other", NOTEPAD, zero, r"C:\Windows\notepad.exe"),
    ]
    assert attack_tree_labels(events, "evil") == {"seed"}
    assert guid(" {ABC-1} ") == "abc-1"
    assert guid(zero) is None


# ---------------------------------------------------------------- metrics


def test_metrics_match_sklearn_and_hand_tpr():
    rng = np.random.default_rng(7)
    ordinary = np.arange(200, dtype=float)  # 0..199: 99th percentile = 197.01
    attack = np.array([250.0, 198.0, 197.0, 197.5, 10.0])
    scores = np.concatenate([ordinary, attack])
    y = np.concatenate([np.zeros(200, bool), np.ones(5, bool)])
    perm = rng.permutation(len(scores))
    scores, y = scores[perm], y[perm]
    flagged = scores >= 195.0  # ordinary 195..199 -> 5 of 200
    m = detection_metrics(scores, y, flagged)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, scores))
    assert m["average_precision"] == pytest.approx(average_precision_score(y, scores))
    assert m["threshold_1pct_fpr"] == pytest.approx(197.01)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(3 / 5)  # 250, 198, 197.5 > 197.01
    assert m["flagged_share_ordinary"] == pytest.approx(5 / 200)
    assert m["flagged_share_attack"] == pytest.approx(4 / 5)
    assert (m["n_attack"], m["n_ordinary"]) == (5, 200)


def test_metrics_strict_greater_and_degenerate_inputs():
    # all ordinary scores equal: the 99th percentile is that score, ties are not detections
    m = detection_metrics(np.array([1.0, 1.0, 1.0, 1.0, 2.0]), np.array([0, 0, 0, 1, 1], bool))
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.5)
    only_ordinary = detection_metrics(np.array([0.1, 0.2]), np.array([False, False]), np.array([True, False]))
    assert only_ordinary["roc_auc"] is None and only_ordinary["average_precision"] is None
    assert only_ordinary["tpr_at_1pct_fpr"] is None
    assert only_ordinary["flagged_share_ordinary"] == 0.5 and only_ordinary["flagged_share_attack"] is None
    only_attack = detection_metrics(np.array([0.1]), np.array([True]))
    assert only_attack["roc_auc"] is None and only_attack["tpr_at_1pct_fpr"] is None
    assert only_attack["n_attack"] == 1 and only_attack["flagged_share_ordinary"] is None
    empty = detection_metrics(np.array([]), np.array([], bool))
    assert empty["n_attack"] == 0 and empty["roc_auc"] is None
    nan = detection_metrics(np.array([np.nan, 0.5, 0.1]), np.array([True, False, False]))
    assert nan["roc_auc"] == 0.0  # a NaN score earns no credit
    with pytest.raises(ValueError):
        detection_metrics(np.array([1.0]), np.array([True, False]))


# ---------------------------------------------------------------- anchors


def _baseline_texts() -> list[str]:
    out = []
    for i in range(40):
        out.append(f"eid=3 image=c:\\program files\\google\\chrome\\application\\chrome.exe "
                   f"protocol=tcp destinationip=10.0.0.{i % 7} destinationport=443")
        out.append(f"eid=1 image=c:\\windows\\system32\\svchost.exe commandline=svchost.exe -k netsvcs "
                   f"parentimage=c:\\windows\\system32\\services.exe user=nt authority\\system n={i % 5}")
        out.append(f"eid=11 image=c:\\windows\\explorer.exe targetfilename=c:\\users\\<user>\\desktop\\{'abcd'[i % 4]}.lnk")
    return out


SEEN = "eid=11 image=c:\\windows\\explorer.exe targetfilename=c:\\users\\<user>\\desktop\\a.lnk"
NOVEL = ("eid=1 image=c:\\windows\\system32\\rundll32.exe commandline=rundll32.exe "
         "c:\\windows\\system32\\comsvcs.dll, minidump <pid> c:\\temp\\lsass.dmp full")


@pytest.mark.parametrize("make", [
    lambda: TfidfNearestNeighbor(),
    lambda: TfidfNearestNeighbor(dense_min_df=2.0),  # all-sparse path
    lambda: TfidfNearestNeighbor(dense_min_df=0.0, sims_budget=1),  # all-dense path, tiny chunks
    lambda: TfidfKMeans(k=3),
])
def test_tfidf_anchors_rank_novel_above_seen(make):
    model = make().fit(_baseline_texts())
    scores = model.score([SEEN, NOVEL, SEEN])
    assert scores.shape == (3,)
    assert scores[1] > scores[0] and scores[0] == pytest.approx(scores[2])
    assert model.score([]).shape == (0,)


def test_tfidf_1nn_exact_against_brute_force():
    from sklearn.metrics.pairwise import cosine_similarity

    base = _baseline_texts()
    test = [SEEN, NOVEL, base[0][:-3] + "80", "zzz qqq"]
    model = TfidfNearestNeighbor(dense_min_df=0.3).fit(base)
    assert 0 < model._n_dense < len(model.vectorizer.vocabulary_)  # both paths in play
    vec = model.vectorizer
    expected = 1 - cosine_similarity(vec.transform(test), vec.transform(sorted(set(base)))).max(axis=1)
    np.testing.assert_allclose(model.score(test), expected, atol=1e-5)
    assert model.score([SEEN])[0] == pytest.approx(0.0, abs=1e-5)


def test_drain3_rarity_streaming():
    pytest.importorskip("drain3")
    model = Drain3Rarity().fit(_baseline_texts())
    novel = "ntlm auth failure for <user> from 10.9.9.9"
    scores = model.score([SEEN, novel, novel])
    assert scores[1] > scores[0]
    assert scores[1] == pytest.approx(np.log(model.total - 1))  # size 1 among 122 seen
    assert scores[2] < scores[1]  # the miner learns as it scores
    assert model.total == len(_baseline_texts()) + 3
