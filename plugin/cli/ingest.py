"""Commands that bring events in: import, simulate."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import structlog

from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")


def cmd_import(args: argparse.Namespace) -> int:
    from plugin.config import load_config
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import configured_stages, load_models
    from plugin.pipeline.importer import Importer
    from plugin.store import open_store

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"import: path does not exist: {', '.join(missing)}")
    if args.since and args.until and args.since >= args.until:
        raise UsageError("import: --since must be earlier than --until")
    cfg = load_config(args.config, {"db": args.db, "model": args.model,
                                    "batch_size": args.batch_size})
    schemas = load_schemas(cfg.schemas_dir)
    embedder, shadow, pool = (None, None, None) if args.no_embed else load_models(cfg)
    store = None
    try:
        store = open_store(cfg.db, data_path=cfg.lake_data_path, memory_limit=cfg.db_memory_limit)

        def make_stages() -> list:
            return configured_stages(store, cfg, embedder, shadow, pool)

        stages = make_stages() if embedder is not None else []
        stored_before = store.event_count() if stages else 0
        importer = Importer(store, schemas, batch_size=cfg.batch_size, since=args.since,
                            until=args.until, config_hash=cfg.digest(),
                            model_version=embedder.version if embedder else None, stages=stages,
                            progress=not args.quiet, evtx_threads=cfg.evtx_threads)
        summary = importer.run(args.paths)
        if stages and summary.new_events:
            _settle(store, stages, make_stages, stored_before == 0, cfg.batch_size, summary,
                    quiet=args.quiet)
        lacking = store.events_lacking_vectors(embedder.name, embedder.version) if embedder else 0
        top = store.list_alerts(status="open", top=5) if not args.json else []
        open_alerts = store.alert_count("open")
        incidents = store.list_incidents(top=5) if not args.json else []
        n_incidents = store.incident_count()
    finally:
        if pool is not None:
            pool.close()
        if store is not None:
            store.close()
    if lacking:
        summary.note += (f"; {lacking:,} stored events have no {embedder.name} vectors (imported "
                         f"with --no-embed or another model): `sysmon-blt rescore --db {cfg.db}` "
                         "embeds and scores them")
    _warn_about_inputs(args.paths, summary)
    if args.json:
        print(json.dumps(asdict(summary), default=str))
    else:
        print(format_summary(summary, top, open_alerts, incidents, n_incidents))
    return 0


def _settle(store, stages: list, make_stages, whole_case: bool, batch_size: int, summary,
            quiet: bool) -> None:
    """A cold start's second walk over the whole case (`plugin.pipeline.settle`), folded into
    the summary: its scores, outliers and time are the ones the import leaves behind."""
    from plugin.pipeline.settle import needs_settling, settle_case

    if not needs_settling(stages):
        return
    if not quiet:
        print(f"sysmon-blt: no fit yet: scoring the case's {store.event_count():,} events again "
              "with its whole-case thresholds (vectors reused, no model pass)", file=sys.stderr,
              flush=True)
    try:
        res = settle_case(store, stages, make_stages, whole_case=whole_case,
                          drop_unconfirmed=whole_case, batch_size=batch_size)
    except Exception:
        # the failure itself (and its advice) follows from `main`; say first what is safe
        print(f"sysmon-blt: the import itself finished: {summary.new_events:,} new events are "
              "stored with their vectors and first-walk scores, but the second walk over the "
              "whole case failed, so alert counts and incidents are incomplete until "
              f"`sysmon-blt rescore --db {store.path}` completes", file=sys.stderr, flush=True)
        raise
    if res is None:
        return
    summary.settled = {"events": res["events"], "seconds": res["seconds"]}
    summary.outliers = res["outliers"]
    summary.stages = ([st for st in summary.stages if st.get("name", "").startswith("embed:")]
                      + [st for st in res["stages"]
                         if not st.get("name", "").startswith("embed:")])
    summary.seconds = round(summary.seconds + res["seconds"], 3)
    if summary.seconds:
        summary.events_per_second = round(summary.sysmon_events / summary.seconds, 1)


def _warn_about_inputs(paths: list[str], s) -> None:
    """Say on stderr when a run read nothing useful, and what it found instead."""
    where = ", ".join(paths)
    if s.files == 0 and s.dead_letters == 0:
        print(f"sysmon-blt: warning: no log files in {where} (looked for .evtx, .json, .jsonl, "
              ".ndjson, .zip, .tar.gz)", file=sys.stderr)
    elif s.sysmon_events == 0:
        print(f"sysmon-blt: warning: no Sysmon events in {where}: {s.records:,} records read, "
              f"{s.skipped_non_sysmon:,} from other event logs, {s.dead_letters:,} unreadable",
              file=sys.stderr)
    for d in s.first_dead_letters:
        at = f" line {d['line']}" if "line" in d else f" record {d['record']}" if "record" in d else ""
        print(f"sysmon-blt: warning: {d['source']}{at}: {d['reason']} (kept in dead_letters)",
              file=sys.stderr)
    if s.dead_letters > len(s.first_dead_letters):
        print(f"sysmon-blt: warning: {s.dead_letters - len(s.first_dead_letters):,} more dead "
              "letters: SELECT * FROM dead_letters", file=sys.stderr)


def _scored_with(stages: list[dict]) -> str | None:
    """Which calibration the alerting model's scores used: a fit, the shipped threshold, or the
    case's own (with its context), so nobody reads a cold start's flags as a fitted baseline's."""
    st = next((st for st in stages if st.get("name", "").startswith("score:") and st.get("alerts")),
              None)
    cal = (st or {}).get("calibration") or {}
    kind = cal.get("calibration")
    if kind is None:
        return None
    if kind.startswith("fit"):
        return f"{kind} (a baseline someone vouched for)"
    if kind == "shipped":
        return "the shipped model's threshold (no fit; cold_start: shipped)"
    events = cal.get("case_events", 0)
    if kind != "case":  # too few events to trust the case's quantile
        return (f"no fit: the shipped threshold at a bar of {cal.get('outlier_bar', 2.0)} (the "
                f"case's {events:,} events are too few to calibrate on)")
    out = (f"no fit: calibrated on this whole case ({events:,} events, a second walk)"
           if cal.get("whole_case") else f"no fit: calibrated on this case ({events:,} events)")
    if cal.get("context"):
        out += (f", with the case's context ({cal.get('novel_creations', 0):,} binaries new to "
                f"the case)")
    return out


def format_summary(s, top: list[dict], open_alerts: int, incidents: list[dict] | None = None,
                   n_incidents: int = 0) -> str:
    """The import summary as a person reads it: counts, time, rates, where the data went, the
    alerts to look at first, and last the top incidents (the stories those alerts belong to)."""
    rows = [
        ("records read", f"{s.records:,} from {s.files:,} input(s)"
         + (f", {s.inputs_skipped_same_sha256:,} already imported" if s.inputs_skipped_same_sha256 else "")),
        ("Sysmon events", f"{s.sysmon_events:,}: {s.new_events:,} new, {s.duplicates:,} already stored"),
        ("not Sysmon", f"{s.skipped_non_sysmon:,} (counted, not stored)"),
        ("dead letters", f"{s.dead_letters:,}" + (" (SELECT * FROM dead_letters)" if s.dead_letters else "")),
    ]
    if s.filtered_by_time:
        rows.append(("outside --since/--until", f"{s.filtered_by_time:,}"))
    rows.append(("time", f"{s.seconds:,.1f} s, {s.events_per_second:,.0f} events/s"))
    for st in s.stages:
        if st.get("name", "").startswith("embed:"):
            rows.append((f"model {st['model']}", f"{st['texts_embedded']:,} new texts embedded "
                         f"({st['texts_per_second']:,.0f}/s), {st['cache_hits']:,} from the cache"))
    scored = _scored_with(s.stages)
    if scored:
        rows.append(("scored with", scored))
    rows.append(("outliers", f"{s.outliers:,} events; {open_alerts:,} open alerts; "
                 f"{n_incidents:,} incidents"))
    if s.inputs_without_sysmon:
        shown = ", ".join(s.inputs_without_sysmon[:5])
        more = len(s.inputs_without_sysmon) - 5
        rows.append(("no Sysmon events in", shown + (f" and {more} more" if more > 0 else "")))
    rows.append(("database", s.db))
    rows.append(("note", s.note))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if s.integrity:
        lines += ["", *format_integrity(s.integrity)]
    if top:
        lines += ["", "top open alerts (sysmon-blt alerts show ID):",
                  f"  {'score':>6}  {'alert id':<12} {'host':<20} text"]
        for a in top:
            lines.append(f"  {a['score']:6.2f}  {a['alert_id'][:12]:<12} "
                         f"{(a['computer'] or '-')[:20]:<20} {(a['normalized'] or '')[:90]}")
    if incidents:
        from plugin.cli.triage import format_incident_list

        lines += ["", "top incidents (sysmon-blt incidents):",
                  format_incident_list(incidents, n_incidents, indent="  ", more_hint=False)]
    return "\n".join(lines)


INTEGRITY_ROWS_SHOWN = 12
INTEGRITY_DETAILS_SHOWN = 3


def format_integrity(rows: list[dict]) -> list[str]:
    """The integrity section of the summary: per input (when there are several), one line per
    host and channel, the alarming ones first and marked `!` (a cleared log, missing record ids,
    Sysmon stopped), each log clearing and Sysmon change under its line. Compact on purpose:
    the full rows are in the `integrity` table."""
    by_input: dict[str, list[dict]] = {}
    for r in rows:
        by_input.setdefault(r["import_path"], []).append(r)
    alarms = sum(1 for r in rows if r.get("alarming"))
    head = "integrity (per host and channel; times UTC"
    head += f"; {alarms} to look at first, marked !):" if alarms else "; nothing alarming):"
    lines, shown = [head], 0
    inputs = sorted(by_input.items(), key=lambda kv: not any(r.get("alarming") for r in kv[1]))
    for path, group in inputs:
        if shown >= INTEGRITY_ROWS_SHOWN:
            break
        indent = "  "
        if len(by_input) > 1:
            lines.append("  " + "!".join(p.replace("\\", "/").rsplit("/", 1)[-1]
                                          for p in path.split("!")))
            indent = "    "
        for r in sorted(group, key=lambda r: not r.get("alarming"))[:INTEGRITY_ROWS_SHOWN - shown]:
            shown += 1
            lines.append(f"{indent}{'!' if r.get('alarming') else ' '} {r['computer'] or '-'} / "
                         f"{r['channel'] or '-'}  {_span(r['first_ts'], r['last_ts'])}  "
                         f"{r['records']:,} record{'' if r['records'] == 1 else 's'}, {_gaps(r)}")
            details = [_clear_line(c) for c in r["log_clears"]]
            details += [_change_line(c) for c in r["sysmon_changes"]]
            lines += [f"{indent}    {d}" for d in details[:INTEGRITY_DETAILS_SHOWN]]
            more = r["log_clear_count"] + r["sysmon_change_count"] - INTEGRITY_DETAILS_SHOWN
            if more > 0:
                lines.append(f"{indent}    and {more:,} more log clearings or Sysmon changes")
    if len(rows) > shown:
        lines.append(f"  and {len(rows) - shown:,} more host/channel rows "
                     "(sysmon-blt export --tables integrity, or the integrity table)")
    return lines


def _span(first: str | None, last: str | None) -> str:
    """``first .. last`` in seconds; the last without its date when the day is the same."""
    if first is None or last is None:
        return "no UTC event time"
    a, b = first[:19].replace("T", " "), last[:19].replace("T", " ")
    return f"{a} .. {b[11:] if a[:10] == b[:10] else b}"


def _gaps(r: dict) -> str:
    if r["gaps"]:
        a, b = r["record_id_gaps"][0]
        text = (f"{r['gaps']:,} record-id gap{'s' if r['gaps'] > 1 else ''}, "
                f"{r['missing_records']:,} missing (first: after {a}, before {b})")
    elif r["records_without_id"] == r["records"]:
        text = "no record ids to check"
    else:
        text = "no record-id gap"
    if r["duplicate_record_ids"]:
        text += f", {r['duplicate_record_ids']:,} repeated record ids"
    return text


def _clear_line(c: dict) -> str:
    who = c.get("user") or c.get("sid") or "unknown account"
    log_name = f" ({c['log']})" if c.get("log") else ""
    return f"LOG CLEARED{log_name} {(c.get('ts') or '?')[:19].replace('T', ' ')} by {who} " \
           f"(EventID {c['event_id']}, record {c.get('record_id')})"


def _change_line(c: dict) -> str:
    keys = [f"{k}={' '.join(str(v).split())}" for k, v in c.items()
            if k not in ("ts", "event_id", "what", "record_id") and v not in (None, "")]
    return (f"Sysmon {c['what']} {(c.get('ts') or '?')[:19].replace('T', ' ')} "
            f"(EventID {c['event_id']}){': ' + ', '.join(keys) if keys else ''}")


def cmd_simulate(args: argparse.Namespace) -> int:
    from plugin import simulate

    if args.events < 0:
        raise UsageError("simulate: --events must be >= 0")
    if not 0.0 <= args.anomaly_rate <= 1.0:
        raise UsageError("simulate: --anomaly-rate must be between 0 and 1")
    tally = simulate.Tally()
    kw = {"seed": args.seed, "anomaly_rate": args.anomaly_rate, "shape": args.shape, "tally": tally}
    if args.kafka:
        if not args.topic:
            raise UsageError("simulate: --kafka needs --topic")
        simulate.produce_kafka(args.kafka, args.topic, args.events, rate=args.rate, **kw)
    else:
        if args.topic or args.rate:
            raise UsageError("simulate: --topic and --rate go with --kafka")
        simulate.write_jsonl(args.out, args.events, **kw)
    if args.anomaly_rate > 0 and args.events and tally.anomalies == 0:
        print(f"sysmon-blt: warning: --anomaly-rate {args.anomaly_rate} injected no anomaly in "
              f"{args.events:,} events: simulated hosts boot first (a few hundred ordinary events "
              "each); ask for more events (e.g. --events 5000)", file=sys.stderr)
    log.info("simulated", events=tally.records, anomalies=tally.anomalies,
             out=args.out or f"kafka:{args.topic}")
    return 0
