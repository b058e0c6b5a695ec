"""The cold start as a new user meets it: each LSASS capture imported alone into a fresh database
(no fit), then its stored scores against the attack-tree labels; and the README demo (simulated
events with injected anomalies, no fit).

Prints per capture: events, attack events, ROC-AUC, TPR at 1% FPR, the share of ordinary and of
attack events flagged, the alerts opened, and the incidents as `sysmon-blt incidents` ranks them
(how many, the rank of the first holding attack events, the share of attack events in the top
three); then the means; then the demo's flagged shares, its ranking quality (ROC-AUC of the
injected anomalies against ordinary events) and a line per scenario (how often its text repeats,
how many hosts, how well it ranks).

usage: python benchmarks/cold_start.py [--data ../shared/data] [--demo-events 20000] [--demo-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np

from plugin.detect.labels import LabelEvent, attack_tree_labels
from plugin.detect.metrics import detection_metrics
from plugin.simulate.event import LABEL_KEY, NORMAL, NOVEL

SEEDS = {"01": r"winx64_payload", "02": r"winx64_payload|happy_image",
         "03": r"winx64_payload|comsvcs\.dll.*MiniDump", "04": r"winx64_payload"}
CLI = [sys.executable, "-m", "plugin.cli"]


def capture(path: Path, seed: str, db: Path) -> dict:
    subprocess.run([*CLI, "import", str(path), "--db", str(db), "-q", "--json"], check=True,
                   capture_output=True)
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT e.event_key, e.fields, e.event_id, a.score, a.is_outlier, a.incident_id "
                       "FROM events e JOIN assignments a USING (event_key) WHERE a.model = 'blt' "
                       "ORDER BY e.imported_at, e.source, e.position").fetchall()
    alerts = con.execute("SELECT count(*) FROM alerts WHERE model = 'blt'").fetchone()[0]
    # the incidents as `sysmon-blt incidents` ranks them
    ranked = [r[0] for r in con.execute("SELECT incident_id FROM incidents WHERE model = 'blt' AND "
                                        "events > 0 ORDER BY score DESC, incident_id").fetchall()]
    con.close()
    labels = attack_tree_labels([LabelEvent(k, json.loads(f) if f else {}, int(i))
                                 for k, f, i, _, _, _ in rows], seed)
    y = np.array([r[0] in labels for r in rows])
    m = detection_metrics(np.array([r[3] for r in rows]), y, np.array([r[4] for r in rows]))
    attack_in: dict[str, int] = {}
    for r, a in zip(rows, y):
        if a and r[5]:
            attack_in[r[5]] = attack_in.get(r[5], 0) + 1
    rank = next((i + 1 for i, iid in enumerate(ranked) if iid in attack_in), None)
    top3 = sum(attack_in.get(iid, 0) for iid in ranked[:3]) / max(int(y.sum()), 1)
    return {**m, "events": len(rows), "alerts": alerts, "incidents": len(ranked),
            "first_attack_incident": rank, "attack_share_top3": top3}


def demo(n: int, tmp: Path) -> dict:
    """The README demo without a fit, by the simulator's side label: flagged shares, and per
    scenario how often its text repeats (events, distinct texts, hosts) and how well the stored
    score ranks it above the ordinary events (ROC-AUC), so a miss can be told apart: a score
    that ranks an anomaly low, or a bar set above a well-ranked one."""
    sim = tmp / "demo.jsonl"
    subprocess.run([*CLI, "simulate", "--events", str(n), "--out", str(sim)], check=True,
                   capture_output=True)
    db = tmp / "demo.duckdb"
    subprocess.run([*CLI, "import", str(sim), "--db", str(db), "-q", "--json"], check=True,
                   capture_output=True)
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        f"SELECT e.fields->>'$.{LABEL_KEY}.scenario', e.computer, e.text_hash, a.score, a.is_outlier "
        "FROM events e JOIN assignments a USING (event_key) WHERE a.model = 'blt'").fetchall()
    con.close()
    scen = np.array([r[0] or NORMAL for r in rows])
    score = np.array([r[3] for r in rows], dtype=np.float64)
    flagged = np.array([bool(r[4]) for r in rows])
    ordinary = np.isin(scen, [NORMAL, NOVEL])
    bar_2pct = float(np.quantile(score[ordinary], 0.98)) if ordinary.any() else float("nan")
    per = {}
    for name in sorted(set(scen[~ordinary]) | {NOVEL}):
        mine = scen == name
        idx = np.flatnonzero(mine)
        vs = mine | (ordinary & (scen != name))
        per[name] = {"events": int(mine.sum()), "texts": len({rows[i][2] for i in idx}),
                     "hosts": len({rows[i][1] for i in idx}), "flagged": int(flagged[mine].sum()),
                     "mean_score": float(score[mine].mean()) if mine.any() else float("nan"),
                     "roc_auc": (detection_metrics(score[vs], mine[vs])["roc_auc"]
                                 if name != NOVEL and mine.any() else None)}
    return {"ordinary": int(ordinary.sum()), "ordinary_flagged": int(flagged[ordinary].sum()),
            "anomalies": int((~ordinary).sum()), "anomalies_flagged": int(flagged[~ordinary].sum()),
            "roc_auc": (detection_metrics(score, ~ordinary)["roc_auc"] if (~ordinary).any() else None),
            "recall_at_2pct_bar": float((score[~ordinary] >= bar_2pct).mean()) if (~ordinary).any() else 0.0,
            "scenarios": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--demo-events", type=int, default=20000)
    ap.add_argument("--demo-only", action="store_true", help="skip the LSASS captures")
    args = ap.parse_args()
    root = Path(args.data) / "otrf" / "compound"
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-"))
    if not args.demo_only:
        print(f"{'capture':8} {'events':>7} {'attack':>7} {'ROC-AUC':>8} {'TPR@1%':>7} {'flag ord':>9} "
              f"{'flag att':>9} {'alerts':>7} {'incidents':>9} {'1st att':>7} {'top3 att':>8}")
        res = []
        for c, seed in SEEDS.items():
            m = capture(root / f"LSASS_campaign_{c}", seed, tmp / f"{c}.duckdb")
            res.append(m)
            print(f"{c:8} {m['events']:>7} {m['n_attack']:>7} {m['roc_auc']:>8.3f} {m['tpr_at_1pct_fpr']:>7.3f} "
                  f"{m['flagged_share_ordinary']:>9.3%} {m['flagged_share_attack']:>9.3%} {m['alerts']:>7} "
                  f"{m['incidents']:>9} {m['first_attack_incident'] or '-':>7} {m['attack_share_top3']:>8.1%}",
                  flush=True)
        mean = {k: float(np.mean([m[k] for m in res])) for k in
                ("roc_auc", "tpr_at_1pct_fpr", "flagged_share_ordinary")}
        print(f"{'mean':8} {'':>7} {'':>7} {mean['roc_auc']:>8.3f} {mean['tpr_at_1pct_fpr']:>7.3f} "
              f"{mean['flagged_share_ordinary']:>9.3%}")
    d = demo(args.demo_events, tmp)
    print(f"\ndemo ({args.demo_events} simulated events, no fit): ordinary flagged "
          f"{d['ordinary_flagged']}/{d['ordinary']} ({d['ordinary_flagged'] / max(d['ordinary'], 1):.1%}), "
          f"injected anomalies flagged {d['anomalies_flagged']}/{d['anomalies']} "
          f"({d['anomalies_flagged'] / max(d['anomalies'], 1):.1%}); ROC-AUC anomalies against ordinary "
          f"{d['roc_auc'] or float('nan'):.3f}; a bar at the ordinary events' 98th percentile would "
          f"catch {d['recall_at_2pct_bar']:.1%}")
    print(f"{'scenario':20} {'events':>6} {'texts':>6} {'hosts':>6} {'flagged':>7} {'mean score':>10} "
          f"{'ROC-AUC':>8}")
    for name, m in d["scenarios"].items():
        auc = "-" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        print(f"{name:20} {m['events']:>6} {m['texts']:>6} {m['hosts']:>6} {m['flagged']:>7} "
              f"{m['mean_score']:>10.2f} {auc:>8}")

if __name__ == "__main__":
    main()
