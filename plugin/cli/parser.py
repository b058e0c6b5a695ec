"""The flags of `sysmon-blt`: every option says what it does and its default.

Global flags (--config, --model, -v, -q) mean the same before or after the command: the
top-level parser keeps them under their own names, each command's parser under ``sub_*`` names
with no defaults, and `merge_globals` folds the two (after the command wins; -v counts add up).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from plugin import __version__
from plugin.store import STATUSES

EPILOG = """\
examples:
  sysmon-blt simulate --events 20000 --out /tmp/demo.jsonl
  sysmon-blt import /tmp/demo.jsonl                 # into ./sysmon-blt.duckdb
  sysmon-blt alerts list                            # the top alerts, no SQL needed
  sysmon-blt import C:/cases/host42/ --db case42.duckdb --since 2024-03-01 --json
  duckdb case42.duckdb "SELECT event_id, count(*) FROM events GROUP BY 1"

configuration: --config FILE (YAML), then SYSMON_BLT_<KEY> environment variables, then flags.
exit codes: 0 done (dead letters included), 1 runtime failure, 2 usage or configuration error.
"""

DB_HELP = ("DuckDB file, or a DuckLake as ducklake:postgres:CONNINFO, ducklake:sqlite:PATH or "
           "ducklake:PATH.ducklake (default: ./sysmon-blt.duckdb, or the `db` config key)")
_GLOBALS = ("config", "model", "verbose", "quiet")


class Formatter(argparse.HelpFormatter):
    """Wraps prose paragraphs to the terminal; keeps paragraphs laid out by hand (examples,
    lists: any paragraph with a line break of its own) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            out.append(para if "\n" in para.strip("\n") else super()._fill_text(para, width, indent))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its message format
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def time_arg(flag: str):
    def parse(value: str) -> datetime:
        v = value.strip()
        try:
            ts = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {value!r}: expected an ISO-8601 date or time, e.g. 2024-03-01 or "
                "2024-03-01T12:00:00Z (UTC when no offset is given)"
            ) from None
        return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)

    return parse


def _globals(prefix: str, defaults: bool) -> argparse.ArgumentParser:
    g = argparse.ArgumentParser(add_help=False)
    kw = (lambda v: {"default": v}) if defaults else (lambda v: {"default": argparse.SUPPRESS})
    g.add_argument("--config", metavar="FILE", dest=prefix + "config", **kw(None),
                   help="YAML configuration file (keys as in the README; unknown keys are errors)")
    g.add_argument("--model", metavar="DIR", dest=prefix + "model", **kw(None),
                   help="model directory (default: the one shipped in the package)")
    g.add_argument("-v", "--verbose", action="count", dest=prefix + "verbose", **kw(0),
                   help="more log output on stderr: -v info, -vv debug (default: warnings)")
    g.add_argument("-q", "--quiet", action="store_true", dest=prefix + "quiet", **kw(False),
                   help="errors only on stderr, no progress bar")
    return g


def merge_globals(args: argparse.Namespace) -> argparse.Namespace:
    """One meaning for a global flag wherever it stands: given after the command it wins, and
    -v given on both sides counts both."""
    for name in _GLOBALS:
        sub = getattr(args, "sub_" + name, None)
        if sub is None:
            continue
        if name == "verbose":
            args.verbose += sub
        elif name == "quiet":
            args.quiet = args.quiet or sub
        else:
            setattr(args, name, sub)
        delattr(args, "sub_" + name)
    return args


def _verdict_flags(p: argparse.ArgumentParser, status_help: str) -> None:
    """--status, --note, --analyst and --json of a verdict (`alerts mark`, `incidents mark`):
    the same audit fields wherever a verdict is given."""
    p.add_argument("--status", required=True, choices=STATUSES, help=status_help)
    p.add_argument("--note", metavar="TEXT", help="why (kept with the change)")
    p.add_argument("--analyst", metavar="NAME", help="who (default: the login name)")
    _json_flag(p, "the change as one JSON object", "one line")


def _json_flag(p: argparse.ArgumentParser, what: str = "the result as one JSON object",
               otherwise: str = "a readable table") -> None:
    p.add_argument("--json", action="store_true",
                   help=f"print {what} on stdout (default: {otherwise})")


def _listing(names: tuple[str, ...]) -> str:
    """Names for an epilog laid out by hand: wrapped to 80 columns, indented."""
    import textwrap

    return "\n".join(textwrap.wrap(", ".join(names), 78, initial_indent="  ",
                                    subsequent_indent="  "))


def build_parser() -> argparse.ArgumentParser:
    sub_globals = _globals("sub_", defaults=False)
    p = Parser(prog="sysmon-blt", description="Sysmon events -> DuckDB, with Byte Latent "
               "Transformer embeddings, clusters and outlier flags.", epilog=EPILOG,
               formatter_class=Formatter,
               parents=[_globals("", defaults=True)])
    p.add_argument("--version", action="version", version=f"sysmon-blt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[sub_globals],
                              formatter_class=Formatter, **kw)

    imp = command(
        "import", help="forensic batch import of .evtx, JSON lines and archives into DuckDB",
        description="Import Sysmon events from .evtx files, JSON lines (.json/.jsonl/.ndjson, or "
        "one JSON array per file), .zip/.tar.gz archives of them, and folders (recursively). "
        "Non-Sysmon records are counted and skipped; malformed records become dead_letters rows "
        "with the reason; importing the same input twice stores each event once. Each event is "
        "embedded and scored on arrival (the shipped model's cold start until you `fit`).",
        epilog="The summary (stdout) counts records, Sysmon events, new events, duplicates, "
        "skipped non-Sysmon records and dead letters, and shows the top alerts; query the result "
        "with `sysmon-blt alerts` or any DuckDB client.\n\nexample:\n"
        "  sysmon-blt import C:/cases/host42/ --db case42.duckdb --since 2024-03-01")
    imp.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or archives")
    imp.add_argument("--db", metavar="FILE", help=DB_HELP)
    imp.add_argument("--since", type=time_arg("--since"), metavar="T",
                     help="keep events at or after T (UTC unless an offset is given; default: all)")
    imp.add_argument("--until", type=time_arg("--until"), metavar="T",
                     help="keep events before T (default: all)")
    _json_flag(imp, "the summary as one JSON object")
    imp.add_argument("--batch-size", type=int, metavar="N",
                     help="events per write transaction (default 5000, or the batch_size key)")
    imp.add_argument("--no-embed", action="store_true",
                     help="store events only, without embeddings or scores (fastest; embed and "
                     "score later with `sysmon-blt rescore`)")

    tr = command(
        "train", help="train a model directory (entropy model + BLT + shadow) on a corpus",
        description="Train every model of a model directory on the canonical texts of the given "
        "inputs (any format `import` reads). Deterministic for a seed on CPU; resumable: rerun "
        "the same command after an interruption and it continues from its last checkpoint.",
        epilog="example (how the shipped default model was trained; write your own folder):\n"
        "  sysmon-blt train ../shared/data/otrf ../shared/data/evtx-rs-samples "
        "--exclude '*LSASS_campaign_*' --out my-model/\n  sysmon-blt import case/ --model my-model/")
    tr.add_argument("paths", nargs="+", metavar="PATH", help="inputs whose events form the corpus")
    tr.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    tr.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="skip inputs (or ARCHIVE!member names) matching this glob; repeatable (default: none)")
    tr.add_argument("--size", default="tiny", choices=["tiny", "small", "base"],
                    help="BLT size (default: tiny, the shipped one)")
    tr.add_argument("--objective", default=None,
                    help="BLT training objective (default: the model's, mpr)")
    tr.add_argument("--steps", type=int, metavar="N", help="BLT training steps (default: the size's)")
    tr.add_argument("--entropy-steps", type=int, metavar="N",
                    help="entropy model training steps (default: the size's)")
    tr.add_argument("--shadow-steps", type=int, metavar="N",
                    help="Linformer shadow masked-LM training steps (default 1500)")
    shadow_opt = tr.add_mutually_exclusive_group()
    shadow_opt.add_argument("--no-shadow", action="store_true",
                            help="train the BLT only (imports then run without the Linformer shadow)")
    shadow_opt.add_argument("--shadow-only", action="store_true",
                            help="add (or retrain) the Linformer shadow of an existing model "
                            "directory, keeping its BLT")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tr.add_argument("--description", metavar="TEXT",
                    help="what the corpus is, for the model card (default: the paths)")

    ev = command(
        "eval", help="detection quality: fit on a baseline, score test inputs, compare with anchors",
        description="Import --baseline and --test inputs (with embeddings), label attack events "
        "(whole --attack inputs, or the process trees grown from processes whose image or command "
        "line matches --attack-seed; the same trees are dropped from the baseline), fit every "
        "scorer on the clean baseline and report ROC-AUC, average precision, TPR at 1% FPR and "
        "the share of ordinary test events flagged, beside TF-IDF 1-NN, TF-IDF + KMeans and "
        "Drain3 template rarity on the same canonical texts.",
        epilog="example (one leave-one-capture-out fold):\n  sysmon-blt eval --baseline "
        "otrf/compound/LSASS_campaign_0{2,3,4} --test otrf/compound/LSASS_campaign_01 "
        "--attack-seed winx64_payload --db lsass.duckdb")
    ev.add_argument("--baseline", nargs="+", required=True, metavar="PATH",
                    help="inputs taken as normal (their attack trees dropped)")
    ev.add_argument("--test", nargs="+", required=True, metavar="PATH", help="inputs scored")
    lab = ev.add_mutually_exclusive_group(required=True)
    lab.add_argument("--attack-seed", metavar="REGEX",
                     help="image or command line of the attack's first processes")
    lab.add_argument("--attack", nargs="+", metavar="PATH", help="inputs whose events are all attack")
    ev.add_argument("--db", metavar="FILE",
                    help="keep the evaluation database here, and reuse its imports (default: a "
                    "temporary one)")
    _json_flag(ev, "the metrics as one JSON object")
    ev.add_argument("--no-anchors", action="store_true", help="skip the TF-IDF and Drain3 anchors")

    fit = command(
        "fit", help="fit clusters and outlier thresholds on a database's events",
        description="Learn the events stored in --db as normal: KMeans clusters (k given, or "
        "chosen by silhouette) and the nearest-neighbour baseline, with thresholds at a high "
        "quantile of baseline distances; and the context of the default score: the image and "
        "module paths the baseline names (a path none names counts against an event) and the "
        "threshold of surprisal + prevalence + process lineage, walked over the baseline's events "
        "in log order. Writes a new version; run `rescore` to apply it to stored events. The "
        "first fit of a store learns every stored event (you vouch for the baseline you "
        "imported; --hold-back-outliers keeps the cold start's flags out). A refit never quietly "
        "absorbs what the current fit flags: those texts stay out of the new baseline unless "
        "their alert was marked a false positive (`alerts mark ID --status false_positive`) or "
        "--accept-outliers is given. Fit on a baseline you trust, never on the evidence.")
    fit.add_argument("--db", metavar="FILE", help=DB_HELP)
    fit.add_argument("--k", type=int, metavar="K", help="clusters (default: chosen by silhouette)")
    fit.add_argument("--quantile", type=float, default=0.99,
                     help="threshold quantile of the baseline's scores (default 0.99: about 1%% of "
                     "ordinary events flagged)")
    held = fit.add_mutually_exclusive_group()
    held.add_argument("--accept-outliers", action="store_true", default=None,
                      help="learn texts the current fit flags as normal too (a refit's default: "
                      "hold them back unless marked false_positive)")
    held.add_argument("--hold-back-outliers", dest="accept_outliers", action="store_false",
                      help="keep flagged texts out of a store's first fit too (its default: "
                      "learn every stored event)")
    _json_flag(fit, "the fit as one JSON object")

    rs = command(
        "rescore", help="re-embed and re-score stored events after a model or fit change",
        description="Embed stored events whose text has no vector of the current model version "
        "(events imported with --no-embed or another --model), then score every stored event "
        "with the latest fit (assignments are replaced, alerts updated).")
    rs.add_argument("--db", metavar="FILE", help=DB_HELP)
    _json_flag(rs, "the run's counts as one JSON object")

    en = command(
        "enrich", help="alert enrichment: JSON in, JSON out",
        description="Read alerts (one JSON object, a JSON array, or JSON lines; any supported "
        "event shape, or {\"alert_id\": ID} for a stored alert) from FILE or stdin ('-') and print "
        "each with a sysmon_blt block: cluster, calibrated score, is_outlier, explanation "
        "(nearest cluster and medoid, surprising spans, process lineage) and the 5 nearest other "
        "stored events by cosine similarity. A record that cannot be read gets one JSON error "
        "object on stdout, and the command exits 1.")
    en.add_argument("file", nargs="?", default="-", metavar="FILE", help="input (default: stdin)")
    en.add_argument("--db", metavar="FILE", help=DB_HELP)

    co = command(
        "consume", help="the streaming consumer: Kafka in, scores and alerts out",
        description="Join a consumer group on one or more topics (a topic starting with ^ is a "
        "regex) and run every message through the same flow as `import`: normalize, micro-batch "
        "(stream_batch_size events or stream_batch_ms, whichever comes first), embed, score, "
        "store. Offsets are committed per partition only once every message up to them is "
        "stored (at least once; replays store nothing twice). New alerts go to --alerts-topic as "
        "the original event plus its sysmon_blt block, alert_id and kind, keyed by computer. "
        "Runs until SIGTERM or SIGINT, then drains, commits and prints its counts. librdkafka "
        "settings (SASL/SSL...) come from the `kafka` config key or SYSMON_BLT_KAFKA_<SETTING> "
        "(dots as underscores); secrets are never logged.",
        epilog="examples:\n  sysmon-blt consume --bootstrap broker:9092 --topic sysmon "
        "--alerts-topic sysmon-alerts --db soc.duckdb\n"
        "  # one of N machines in one group, all writing one DuckLake (README: Scale-out)\n"
        "  SYSMON_BLT_LAKE_DATA_PATH=/mnt/lake sysmon-blt consume --bootstrap broker:9092 "
        "--topic sysmon \\\n      --db 'ducklake:postgres:dbname=soc host=catalog.internal'")
    co.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap server")
    co.add_argument("--topic", required=True, action="append", metavar="T",
                    help="topic to consume (repeatable; ^REGEX for a pattern)")
    co.add_argument("--group", default="sysmon-blt", metavar="G",
                    help="consumer group (default sysmon-blt)")
    co.add_argument("--alerts-topic", metavar="T", help="publish new alerts here (default: none)")
    co.add_argument("--dead-letter-topic", metavar="T",
                    help="also send messages that cannot be read here, with the reason in a "
                    "header (default: the dead_letters table only)")
    co.add_argument("--db", metavar="FILE", help=DB_HELP)
    co.add_argument("--no-embed", action="store_true",
                    help="store and commit events without the models (no scores, no alerts); "
                    "`rescore` embeds them later")
    co.add_argument("--serve", metavar="[HOST:]PORT",
                    help="also answer HTTP here: POST /enrich, POST /feedback, GET /healthz, GET "
                    "/metrics, /docs (default: no HTTP; loopback unless a host is given)")

    sv = command(
        "serve", help="HTTP enrichment, feedback and the triage page over a database nobody "
        "is writing",
        description="Serve the triage page at / (incidents and alerts ranked, one page per alert "
        "with its verdict buttons), POST /enrich, POST /feedback, GET /healthz, GET /metrics and "
        "the OpenAPI page /docs over --db. With the service_token setting (or "
        "SYSMON_BLT_SERVICE_TOKEN) every route but /healthz asks for the token: API clients as "
        "'Authorization: Bearer TOKEN', the page once on its login form. A DuckDB file has one "
        "writing process, and `serve` holds --db for its lifetime (DuckDB lets no other "
        "process read it meanwhile): other commands on that file (alerts mark, export, "
        "import, report) fail until it stops, so mark alerts on the page or with POST "
        "/feedback while it runs. While `consume` writes a file, use `consume --serve` "
        "instead.")
    sv.add_argument("--db", metavar="FILE", help=DB_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    pr = command(
        "prune", help="retention: drop events older than N days (fits, alerts, imports stay)",
        description="Delete events whose own time (else their import time) is older than N days, "
        "with their scores and labels, older dead letters, and the vectors no remaining event or "
        "fit needs. Fits, clusters, alerts (and their history) and the imports' chain of custody "
        "stay. Not while another process writes the file.")
    pr.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="age in days")
    pr.add_argument("--db", metavar="FILE", help=DB_HELP)
    _json_flag(pr, "what was removed as one JSON object", "one line")

    mt = command(
        "maintain", help="upkeep: a DuckLake's duplicates, small files and old snapshots",
        description="On a DuckLake (--db ducklake:...): remove duplicate rows two writers let "
        "in at the same moment (the oldest row of a key stays), write the rows its catalog "
        "holds inline to Parquet, merge small files, rewrite files that are mostly deleted "
        "rows, expire snapshots older than --older-than days and delete the files only those "
        "snapshots referenced. Safe while consumers write (a step that loses a commit race "
        "runs again); run it daily or weekly, from one machine. On a DuckDB file there is "
        "nothing of this to do (keys are enforced; no snapshots or small files): it runs a "
        "CHECKPOINT and says so.",
        epilog="examples:\n"
        "  sysmon-blt maintain --db 'ducklake:postgres:dbname=soc host=db.internal'\n"
        "  sysmon-blt maintain --db ducklake:sqlite:/shared/soc.sqlite --older-than 30 --json\n"
        "  sysmon-blt maintain --db case42.duckdb      # a DuckDB file: a CHECKPOINT\n"
        "  # nightly, beside running consumers (config names db and lake_data_path):\n"
        "  15 3 * * *  sysmon-blt maintain --config /etc/sysmon-blt.yaml -q\n\n"
        "Snapshots younger than --older-than, and their files, stay: time travel over that "
        "window and readers in the middle of a query keep working.")
    mt.add_argument("--db", metavar="DB",
                    help="a DuckLake (ducklake:postgres:..., ducklake:sqlite:PATH, "
                    "ducklake:PATH.ducklake) or a DuckDB file (default: the `db` config key, "
                    "else ./sysmon-blt.duckdb)")
    mt.add_argument("--older-than", type=float, default=7.0, metavar="DAYS",
                    help="expire DuckLake snapshots older than DAYS, and delete the files "
                    "only they referenced (default 7; 0 keeps only the newest snapshot, and a "
                    "query running meanwhile may lose its files)")
    _json_flag(mt, "what was done as one JSON object", "one line per step")

    al = command(
        "alerts", help="triage without SQL: list, show and mark alerts",
        description="Alerts are the primary model's outliers, one per canonical text (twins fold "
        "into a count). An ID may be shortened to any unique prefix.",
        epilog="examples:\n  sysmon-blt alerts list --status open --top 20\n"
        "  sysmon-blt alerts show 152d45af\n"
        "  sysmon-blt alerts mark 152d45af --status false_positive --note 'backup agent'")
    al.add_argument("--db", metavar="FILE", help=DB_HELP)
    al_sub = al.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    al_sub.required = True
    def action(name: str, **kw) -> argparse.ArgumentParser:
        a = al_sub.add_parser(name, parents=[sub_globals],
                              formatter_class=Formatter, **kw)
        a.add_argument("--db", metavar="FILE", default=argparse.SUPPRESS, help=DB_HELP)
        return a

    ls = action("list", help="alerts, highest score first")
    ls.add_argument("--status", choices=STATUSES, help="only alerts with this status (default: all)")
    ls.add_argument("--host", metavar="H", help="only alerts on this computer (case-insensitive)")
    ls.add_argument("--since", type=time_arg("--since"), metavar="T",
                    help="only alerts seen at or after T (UTC unless an offset is given)")
    ls.add_argument("--top", type=int, default=20, metavar="N", help="at most N alerts (default 20; 0: all)")
    _json_flag(ls, "the alerts as a JSON array")
    sh = action("show", help="one alert: the event and why it stands out, in words")
    sh.add_argument("alert_id", metavar="ID", help="alert id or a unique prefix of it")
    _json_flag(sh, "the alert whole, as one JSON object")
    mk = action("mark", help="set an alert's status (kept with who and when)")
    mk.add_argument("alert_id", metavar="ID", help="alert id or a unique prefix of it")
    _verdict_flags(mk, "false_positive (a refit learns its text as normal), suppressed, or open")

    inc = command(
        "incidents", help="the primary model's outliers grouped into stories, best first",
        description="An incident is one host's process tree in trouble: its root is the earliest "
        "ancestor that is itself an outlier or runs a binary the fitted baseline never saw (not "
        "explorer.exe or services.exe, which would make one incident per host), and it holds "
        "every event of the root's tree, outlier or not, while its outliers come less than "
        "incident_window_minutes (config key, default 60) apart. Incidents form as events are "
        "imported, consumed or rescored; only the primary model (BLT) forms them.\n\n"
        "Ranked by a score that weighs breadth, not only the highest event score: the peak "
        "score, plus 0.5 x log2(1 + distinct outlier texts), 0.25 x log2(1 + outlier events), "
        "0.25 per distinct event id beyond the first (up to 6) and 0.5 per never-seen path of the "
        "root (up to 4). Columns: id (a prefix), host, root image, first and last event time "
        "(UTC), events of the tree, distinct alerts, score, status.",
        epilog="examples:\n  sysmon-blt incidents --top 10\n"
        "  sysmon-blt incidents --json | jq '.[0].texts'\n"
        "  sysmon-blt incidents mark ab12cd34 --status false_positive --note 'patch rollout'\n"
        "  sysmon-blt alerts list --json             # each alert names its incident_ids\n"
        "  duckdb sysmon-blt.duckdb \"SELECT e.ts, e.event_id, e.normalized FROM assignments s "
        "JOIN events e USING (event_key) WHERE s.incident_id LIKE 'ab12%' ORDER BY e.ts\"")
    inc.add_argument("--db", metavar="FILE", help=DB_HELP)
    inc.add_argument("--top", type=int, default=20, metavar="N",
                     help="at most N incidents (default 20; 0: all)")
    inc.add_argument("--host", metavar="H",
                     help="only incidents on this computer (case-insensitive; default: all)")
    _json_flag(inc, "the incidents as a JSON array (full ids, texts and counts)")
    # `incidents` alone lists (the contract's form); `incidents mark ID` is the one action
    inc_sub = inc.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    inc_sub.required = False
    imk = inc_sub.add_parser(
        "mark", parents=[sub_globals], formatter_class=Formatter,
        help="set an incident's status and each of its alerts' (kept with who and when)",
        description="Give an incident a verdict: its status, and the same status for every "
        "alert it holds (a false positive story is a false positive in each of its alerts, and "
        "their twins stop alerting). Every change is kept with who and when: the incident's, "
        "and each alert's with a note naming the incident (`alerts show ID` lists them).")
    imk.add_argument("--db", metavar="FILE", default=argparse.SUPPRESS, help=DB_HELP)
    imk.add_argument("incident_id", metavar="ID", help="incident id or a unique prefix of it")
    _verdict_flags(imk, "false_positive (a refit learns its alerts' texts as normal), "
                   "suppressed, or open")

    from plugin.store.export import DEFAULT_TABLES, ON_REQUEST

    xp = command(
        "export", help="tables out as Parquet or CSV files, for other tools",
        description="Write a database's tables to DIR, one file per table (TABLE.parquet or "
        "TABLE.csv), streamed by DuckDB: a table of millions of events is never held in memory. "
        "The database is opened read-only and left as it is; a file another process is writing "
        "cannot be exported until it stops (DuckDB allows one writer). Files of the same names "
        "in DIR are replaced; a failed export leaves no half-written file under a table's "
        "name. Times are UTC; JSON columns (fields, explanation, record_id_gaps, ...) are text "
        "holding JSON.",
        epilog="tables exported by default:\n" + _listing(DEFAULT_TABLES) + "\n"
        "on request only (--tables); event_vectors is large (one FLOAT[d] per event and "
        "model):\n" + _listing(ON_REQUEST) + "\n\nexamples:\n"
        "  sysmon-blt export --db case42.duckdb --out case42-tables/\n"
        "  sysmon-blt export --db case42.duckdb --out csv/ --format csv --tables events,integrity\n"
        "  sysmon-blt export --db case42.duckdb --out vec/ --tables event_vectors\n"
        "  duckdb -c \"SELECT computer, count(*) FROM 'case42-tables/events.parquet' GROUP BY 1\"\n"
        "  python -c \"import pandas; print(pandas.read_parquet('case42-tables/alerts.parquet'))\"")
    xp.add_argument("--db", metavar="FILE", help=DB_HELP)
    xp.add_argument("--out", required=True, metavar="DIR",
                    help="folder to write to (created when missing)")
    xp.add_argument("--format", choices=["parquet", "csv"], default="parquet",
                    help="file format (default parquet: typed, compressed, fast to query; csv for "
                    "spreadsheets, vectors and lists written as text)")
    xp.add_argument("--tables", metavar="T1,T2",
                    help="comma-separated tables to export (default: the tables listed below, "
                    "without vectors)")
    _json_flag(xp, "what was written as one JSON object", "one line per table")

    sim = command(
        "simulate", help="synthetic Sysmon events for demos and load tests",
        description="Generate realistic Sysmon events from a small simulated fleet (process trees, "
        "network, image loads, registry, files). Injected anomalies are labelled in the side field "
        "sysmon_blt_sim, which never reaches the canonical text the models see. Hosts boot first "
        "(a few hundred ordinary events each), so small runs may hold no anomaly.")
    sim.add_argument("--events", type=int, required=True, metavar="N", help="how many events")
    dest = sim.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", metavar="FILE", help="JSON lines file ('-' for stdout)")
    dest.add_argument("--kafka", metavar="HOST:PORT", help="produce to this Kafka broker")
    sim.add_argument("--topic", metavar="T", help="Kafka topic (with --kafka)")
    sim.add_argument("--rate", type=float, metavar="EPS",
                     help="events per second (with --kafka; default: as fast as possible)")
    sim.add_argument("--seed", type=int, default=0, help="random seed: same seed, same events (default 0)")
    sim.add_argument("--anomaly-rate", type=float, default=0.01, metavar="R",
                     help="share of activity that is an injected anomaly, 0..1 (default 0.01)")
    sim.add_argument("--shape", choices=["winlogbeat8", "nxlog", "evtxjson", "mixed"],
                     default="winlogbeat8", help="how events are serialized (default winlogbeat8)")

    rep = command(
        "report", help="BLT-vs-shadow comparison report (HTML + PNG + summary.json)",
        description="Compare the primary (BLT) and shadow (Linformer) embeddings stored in a database:\n"
        "cosine similarity of random event pairs, KMeans silhouette for k = 2..15, PCA explained\n"
        "variance, agreement of their clusters, outlier flags and scores, detection metrics on\n"
        "labelled events and stored eval runs, and the embedding throughput of past imports.\n"
        "Opens the database read-only; a section without data (one model, no labels) says so.",
        epilog="writes DIR/report.html (self-contained: figures embedded, opens offline), DIR/*.png\n"
        "and DIR/summary.json (every number of the page).\n\nexample:\n"
        "  sysmon-blt report --db case42.duckdb --out case42-report/")
    rep.add_argument("--db", metavar="FILE", help=DB_HELP)
    rep.add_argument("--out", required=True, metavar="DIR", help="folder to write the report to")
    rep.add_argument("--sample", type=int, default=20000, metavar="N",
                     help="events sampled for the vector statistics (default 20000)")
    rep.add_argument("--seed", type=int, default=0, help="sampling and KMeans seed (default 0)")
    _json_flag(rep, "summary.json", "where the files went and what they say")
    return p
