"""Commands an analyst triages with: alerts, incidents, enrich, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import structlog

from plugin.cli.common import existing_db, existing_db_and_model
from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")


def _read_docs(raw: bytes) -> list[tuple[int, object]]:
    """(line, document) pairs: one JSON object or array for the whole input, else JSON lines;
    a line that is not JSON becomes an error marker (line, JSONDecodeError) for its own reply."""
    import orjson

    try:
        doc = orjson.loads(raw)
        return [(i + 1, d) for i, d in enumerate(doc)] if isinstance(doc, list) else [(1, doc)]
    except orjson.JSONDecodeError:
        pass
    out: list[tuple[int, object]] = []
    for i, line in enumerate(raw.splitlines()):
        if not line.strip():
            continue
        try:
            out.append((i + 1, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            out.append((i + 1, exc))
    return out


def cmd_enrich(args: argparse.Namespace) -> int:
    from plugin.detect.enrich import Enricher
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import model_dir_of
    from plugin.store import open_store

    if args.file != "-" and not Path(args.file).is_file():
        raise UsageError(f"enrich: {args.file} does not exist")
    cfg, embedder = existing_db_and_model("enrich", args)
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    docs = _read_docs(raw)
    if not docs:
        raise UsageError(f"enrich: {args.file if args.file != '-' else 'stdin'} holds no JSON")
    bad = 0
    store = open_store(cfg.db, data_path=cfg.lake_data_path, read_only=True)
    try:
        enricher = Enricher.for_store(store, embedder, model_dir_of(cfg), load_schemas(cfg.schemas_dir))
        for line, doc in docs:
            if isinstance(doc, Exception):
                out = {"sysmon_blt": {"error": f"not JSON: {doc}", "line": line}}
            elif not isinstance(doc, dict):
                out = {"sysmon_blt": {"error": "an alert must be a JSON object", "line": line}}
            else:
                out = enricher.enrich(doc)
                if "error" in out["sysmon_blt"]:
                    out["sysmon_blt"]["line"] = line
            if "error" in out["sysmon_blt"]:
                bad += 1
            print(json.dumps(out, default=str), flush=True)
    finally:
        store.close()
    if bad:
        print(f"sysmon-blt: enrich: {bad} of {len(docs)} record(s) could not be enriched "
              "(see their sysmon_blt.error on stdout)", file=sys.stderr)
        return 1
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    import getpass

    from plugin.detect.explain import reasons
    from plugin.store import AlertNotFound, open_store

    cfg = existing_db("alerts", args)
    if args.action == "list" and args.top < 0:
        raise UsageError("alerts list: --top must be >= 0")
    store = open_store(cfg.db, data_path=cfg.lake_data_path,
                       read_only=args.action != "mark", memory_limit=cfg.db_memory_limit)
    try:
        if args.action == "list":
            rows = store.list_alerts(status=args.status, host=args.host, since=args.since,
                                     top=args.top or None)
            total = store.alert_count(args.status)
            if args.json:
                print(json.dumps(rows, default=str))
            else:
                print(format_alert_list(rows, total))
        elif args.action == "show":
            a = store.alert(args.alert_id)
            if args.json:
                print(json.dumps(a, default=str))
            else:
                print(format_alert(a, reasons(a["explanation"] or {})))
        else:
            who = args.analyst or getpass.getuser()
            change = store.mark_alert(args.alert_id, args.status, args.note, who)
            print(json.dumps(change) if args.json else
                  f"alert {change['alert_id']}: {change['previous_status']} -> {change['status']} "
                  f"(by {who}{', ' + repr(args.note) if args.note else ''})")
    except AlertNotFound as exc:
        raise UsageError(f"alerts {args.action}: {exc}") from exc
    finally:
        store.close()
    return 0


def format_alert_list(rows: list[dict], total: int) -> str:
    if not rows:
        return "no alerts" + (f" match (of {total})" if total else "")
    lines = [f"{'score':>6}  {'alert id':<24}  {'status':<14} {'count':>5}  {'last seen':<20} "
             f"{'host':<18} text"]
    for a in rows:
        seen = a["last_seen"].strftime("%Y-%m-%d %H:%M:%S") if a["last_seen"] else "-"
        lines.append(f"{a['score']:6.2f}  {a['alert_id']:<24}  {a['status']:<14} {a['count']:>5}  "
                     f"{seen:<20} {(a['computer'] or '-')[:18]:<18} {(a['normalized'] or '')[:80]}")
    if total > len(rows):
        lines.append(f"({len(rows)} of {total}; --top N shows more, --top 0 all)")
    return "\n".join(lines)


def format_alert(a: dict, why: list[str]) -> str:
    seen = (f"{a['first_seen']:%Y-%m-%d %H:%M:%S} .. {a['last_seen']:%Y-%m-%d %H:%M:%S} UTC"
            if a["first_seen"] else "-")
    lines = [f"alert {a['alert_id']}  score {a['score']:.2f} (1.0 = threshold)  {a['status']}",
             f"  seen {a['count']}x, {seen}, first on {a['computer'] or '-'}",
             f"  event {a['event_key']} (event id {a['event_id']}, {a['source']})",
             f"  text  {a['normalized']}"]
    if a.get("incident_ids"):
        lines.append("  in incident(s) " + ", ".join(i[:12] for i in a["incident_ids"])
                     + " (sysmon-blt incidents)")
    lines += ["", "why it stands out:"]
    lines += [f"  {i + 1}. {r}" for i, r in enumerate(why)] or ["  (no explanation stored)"]
    if a["history"]:
        lines += ["", "history:"]
        lines += [f"  {h['at']:%Y-%m-%d %H:%M:%S} {h['analyst']}: {h['status']}"
                  + (f" ({h['note']})" if h["note"] else "") for h in a["history"]]
    return "\n".join(lines)


def cmd_incidents(args: argparse.Namespace) -> int:
    from plugin.store import open_store

    if getattr(args, "action", None) == "mark":
        return _mark_incident(args)
    if args.top < 0:
        raise UsageError("incidents: --top must be >= 0")
    cfg = existing_db("incidents", args)
    store = open_store(cfg.db, data_path=cfg.lake_data_path,
                       read_only=True, memory_limit=cfg.db_memory_limit)
    try:
        rows = store.list_incidents(top=args.top or None, host=args.host)
        total = store.incident_count()
    finally:
        store.close()
    print(json.dumps(rows, default=str) if args.json else format_incident_list(rows, total))
    return 0


def _mark_incident(args: argparse.Namespace) -> int:
    """`incidents mark`: the same store path as POST /feedback with an incident_id."""
    import getpass

    from plugin.store import IncidentNotFound, open_store

    cfg = existing_db("incidents mark", args)
    who = args.analyst or getpass.getuser()
    store = open_store(cfg.db, data_path=cfg.lake_data_path, memory_limit=cfg.db_memory_limit)
    try:
        change = store.mark_incident(args.incident_id, args.status, args.note, who)
    except IncidentNotFound as exc:
        raise UsageError(f"incidents mark: {exc}") from exc
    finally:
        store.close()
    log.info("incident_marked", incident_id=change["incident_id"], status=args.status,
             previous=change["previous_status"], alerts=len(change["alerts"]), analyst=who,
             via="cli")
    print(json.dumps(change) if args.json else
          f"incident {change['incident_id']}: {change['previous_status']} -> {change['status']}, "
          f"and {len(change['alerts'])} alert(s) (by {who}"
          f"{', ' + repr(args.note) if args.note else ''})")
    return 0


def format_incident_list(rows: list[dict], total: int, indent: str = "",
                         more_hint: bool = True) -> str:
    """Incidents as a ranked table: id prefix, host, root image, first and last time (UTC),
    events, alerts, score, status."""
    if not rows:
        return indent + "no incidents" + (f" match (of {total})" if total else "")

    def when(ts) -> str:
        return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else "-"

    lines = [f"{indent}{'score':>6}  {'incident':<12} {'host':<18} {'root image':<32} "
             f"{'first seen':<19}  {'last seen':<19} {'events':>6} {'alerts':>6}  status"]
    for r in rows:
        image = r["root_image"] or r["root_guid"]
        image = image if len(image) <= 32 else "..." + image[-29:]  # the file name matters most
        lines.append(f"{indent}{r['score']:6.2f}  {r['incident_id'][:12]:<12} "
                     f"{(r['computer'] or '-')[:18]:<18} {image:<32} {when(r['first_seen']):<19}  "
                     f"{when(r['last_seen']):<19} {r['events']:>6} {r['alerts']:>6}  {r['status']}")
    if more_hint and total > len(rows):
        lines.append(f"{indent}({len(rows)} of {total}; --top N shows more, --top 0 all)")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from plugin.report.compare import build_report
    from plugin.store import open_store

    if args.sample < 2:
        raise UsageError("report: --sample must be at least 2")
    cfg = existing_db("report", args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"report: --out {out} is a file, not a folder")
    store = open_store(cfg.db, data_path=cfg.lake_data_path, read_only=True)
    try:
        summary = build_report(store, out, sample=args.sample, seed=args.seed)
    finally:
        store.close()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"report   {out / 'report.html'}\nsummary  {out / 'summary.json'}")
        for section, text in summary["interpretation"].items():
            print(f"- {section}: {text}")
        for section, why in summary["missing"].items():
            print(f"- {section}: not available: {why}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta, timezone

    from plugin.store import open_store

    if args.older_than <= 0:
        raise UsageError("prune: --older-than must be a positive number of days")
    cfg = existing_db("prune", args)
    before = datetime.now(timezone.utc) - timedelta(days=args.older_than)
    store = open_store(cfg.db, data_path=cfg.lake_data_path, memory_limit=cfg.db_memory_limit)
    try:
        removed = store.prune(before)
    finally:
        store.close()
    out = {"before": before.isoformat(), "removed": removed}
    print(json.dumps(out) if args.json else
          f"removed, from before {before:%Y-%m-%d %H:%M} UTC: "
          + ", ".join(f"{n:,} {table}" for table, n in removed.items()))
    return 0
