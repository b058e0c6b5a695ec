"""The cold start as a new user meets it: each LSASS capture imported alone into a fresh database
(no fit), then its stored scores against the attack-tree labels; and the README demo (simulated
events with injected anomalies, no fit).

Prints per capture: events, attack events, ROC-AUC, TPR at 1% FPR, the share of ordinary and of
attack events flagged, the alerts opened, and the incidents as `sysmon-blt incidents` ranks them
(how many, the rank of the first holding attack events, the share of attack events in the top
three); then the means; then the demo's flagged shares.

usage: python benchmarks/cold_start.py [--data ../shared/data] [--demo-events 20000]
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


def demo(n: int, tmp: Path) -> tuple[int, int, int, int]:
    sim = tmp / "demo.jsonl"
    subprocess.run([*CLI, "simulate", "--events", str(n), "--out", str(sim)], check=True,
                   capture_output=True)
    db = tmp / "demo.duckdb"
    subprocess.run([*CLI, "import", str(sim), "--db", str(db), "-q", "--json"], check=True,
                   capture_output=True)
    con = duckdb.connect(str(db), read_only=True)
    got = dict((bool(a), (n_, int(f))) for a, n_, f in con.execute(
        "SELECT e.raw LIKE '%\"anomaly\":true%', count(*), sum(a.is_outlier::int) FROM events e "
        "JOIN assignments a USING (event_key) WHERE a.model = 'blt' GROUP BY 1").fetchall())
    con.close()
    return (*got.get(False, (0, 0)), *got.get(True, (0, 0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--demo-events", type=int, default=20000)
    args = ap.parse_args()
    root = Path(args.data) / "otrf" / "compound"
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-"))
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
    n_ord, f_ord, n_an, f_an = demo(args.demo_events, tmp)
    print(f"demo ({args.demo_events} simulated events, no fit): ordinary flagged {f_ord}/{n_ord} "
          f"({f_ord / max(n_ord, 1):.1%}), injected anomalies flagged {f_an}/{n_an} "
          f"({f_an / max(n_an, 1):.1%})")


if __name__ == "__main__":
    main()
