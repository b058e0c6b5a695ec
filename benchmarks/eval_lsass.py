"""The in-environment evaluation: leave-one-capture-out over otrf/compound/LSASS_campaign_01..04.

For each capture: baseline = the other three captures without their attack trees, test = this
capture, attack events labelled by process tree from the capture's seed (../shared/data/README.md).
One evaluation database serves all four folds (inputs are imported once). Prints each fold's
table and its incidents (the default scorer's outliers grouped as an import groups them: the rank
of the first incident holding attack events, the share of attack events in the top three, how
many incidents and alerts), then the mean per scorer, and writes everything as JSON.

usage: python benchmarks/eval_lsass.py [--data ../shared/data] [--db lsass.duckdb] [--out eval.json]
       [--model DIR] [--no-anchors]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SEEDS = {
    "01": r"winx64_payload",
    "02": r"winx64_payload|happy_image",
    "03": r"winx64_payload|comsvcs\.dll.*MiniDump",
    "04": r"winx64_payload",
}
COLS = ("roc_auc", "average_precision", "tpr_at_1pct_fpr", "flagged_share_ordinary")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--db", default="lsass-eval.duckdb")
    ap.add_argument("--out", default="lsass-eval.json")
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-anchors", action="store_true",
                    help="our scorers only (e.g. comparing model variants)")
    args = ap.parse_args()
    root = Path(args.data) / "otrf" / "compound"
    caps = {c: str(root / f"LSASS_campaign_{c}") for c in SEEDS}
    folds = {}
    for c, seed in SEEDS.items():
        cmd = [sys.executable, "-m", "plugin.cli", "eval", "--baseline",
               *[p for k, p in caps.items() if k != c], "--test", caps[c],
               "--attack-seed", seed, "--db", args.db, "--json", "-q"]
        if args.model:
            cmd += ["--model", args.model]
        if args.no_anchors:
            cmd += ["--no-anchors"]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        folds[c] = res
        print(f"\n== LSASS_campaign_{c} (seed {seed}): test {res['test_events']} events, "
              f"{res['attack_events']} attack; baseline {res['baseline_events']}")
        print(f"{'scorer':16} " + " ".join(f"{k:>12}" for k in ("ROC-AUC", "AP", "TPR@1%FPR", "flagged")))
        for name, m in res["scorers"].items():
            print(f"{name:16} " + " ".join(f"{m[k]:12.3f}" if isinstance(m.get(k), (int, float)) else f"{'-':>12}" for k in COLS))
        inc = res.get("incidents")
        if inc:
            share = inc["attack_share_top3"]
            print(f"incidents {inc['incidents']} (alerts {inc['alerts']}, outlier events "
                  f"{inc['outlier_events']}); first incident with attack events at rank "
                  f"{inc['first_attack_incident_rank'] or '-'}; attack events in the top three "
                  + (f"{share:.1%}" if share is not None else "-"))
            for r, top in enumerate(inc["top"][:3]):
                print(f"  {r + 1}. score {top['score']:.2f} {top['root_image']} on {top['computer']}: "
                      f"{top['events']} events, {top['alerts']} alerts, {top['attack_events']} attack")
    print("\n== mean over the four captures")
    names = list(next(iter(folds.values()))["scorers"])
    mean = {}
    for name in names:
        mean[name] = {}
        for k in COLS:
            vals = [f["scorers"][name].get(k) for f in folds.values()]
            vals = [v for v in vals if isinstance(v, (int, float))]
            mean[name][k] = sum(vals) / len(vals) if vals else None
        print(f"{name:16} " + " ".join(f"{mean[name][k]:12.3f}" if mean[name][k] is not None else f"{'-':>12}" for k in COLS))
    incs = [f["incidents"] for f in folds.values() if f.get("incidents")]
    if incs:
        print("\n== incidents per capture")
        print(f"{'capture':8} {'incidents':>9} {'alerts':>7} {'first attack rank':>18} {'attack in top 3':>16}")
        for c, f in folds.items():
            i = f.get("incidents") or {}
            share = i.get("attack_share_top3")
            print(f"{c:8} {i.get('incidents', '-'):>9} {i.get('alerts', '-'):>7} "
                  f"{i.get('first_attack_incident_rank') or '-':>18} "
                  + (f"{share:>16.1%}" if share is not None else f"{'-':>16}"))
    Path(args.out).write_text(json.dumps({"folds": folds, "mean": mean}, indent=2))


if __name__ == "__main__":
    main()
