"""`sysmon-blt`: the command line. Logs and progress go to stderr; data and --json to stdout.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error (the message names the
bad flag, key or file).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import structlog

from plugin import __version__
from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")

EPILOG = """\
examples:
  sysmon-blt simulate --events 20000 --out demo.jsonl
  sysmon-blt import demo.jsonl                      # into ./sysmon-blt.duckdb
  sysmon-blt import C:/cases/host42/ --db case42.duckdb --since 2024-03-01 --json
  duckdb case42.duckdb "SELECT event_id, count(*) FROM events GROUP BY 1"

configuration: --config FILE (YAML), SYSMON_BLT_<KEY> environment variables, then flags.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its message format
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _time_arg(flag: str):
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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML configuration file")
    common.add_argument("--model", metavar="DIR", help="model directory (default: the shipped one)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="errors only on stderr")

    p = _Parser(prog="sysmon-blt", description="Sysmon events -> DuckDB, with Byte Latent "
                "Transformer embeddings, clusters and outlier flags.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    p.add_argument("--version", action="version", version=f"sysmon-blt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    imp = sub.add_parser(
        "import", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="forensic batch import of .evtx, JSON lines and archives into DuckDB",
        description="Import Sysmon events from .evtx files, JSON lines (.json/.jsonl/.ndjson, or "
        "one JSON array per file), .zip/.tar.gz archives of them, and folders (recursively). "
        "Non-Sysmon records are counted and skipped; malformed records become dead_letters rows "
        "with the reason; importing the same input twice stores each event once.",
        epilog="The summary (stdout) counts records, sysmon_events, new_events, duplicates, "
        "skipped_non_sysmon, dead_letters; query the result with any DuckDB client.")
    imp.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or archives")
    imp.add_argument("--db", metavar="FILE", help="DuckDB file (default: ./sysmon-blt.duckdb)")
    imp.add_argument("--since", type=_time_arg("--since"), metavar="T",
                     help="keep events at or after T (UTC unless an offset is given)")
    imp.add_argument("--until", type=_time_arg("--until"), metavar="T",
                     help="keep events before T")
    imp.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    imp.add_argument("--batch-size", type=int, metavar="N", help="events per write transaction")
    imp.add_argument("--no-embed", action="store_true",
                     help="store events only, without embeddings (fastest triage)")

    tr = sub.add_parser(
        "train", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a model directory (entropy model + BLT) on a corpus of events",
        description="Train every model of a model directory on the canonical texts of the given "
        "inputs (any format `import` reads). Deterministic for a seed on CPU; resumable: rerun "
        "the same command after an interruption and it continues from its last checkpoint.",
        epilog="example (the shipped default model):\n  sysmon-blt train ../shared/data/otrf "
        "../shared/data/evtx-rs-samples --exclude '*LSASS_campaign_*' --out plugin/assets/default-model")
    tr.add_argument("paths", nargs="+", metavar="PATH")
    tr.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    tr.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="skip inputs (or ARCHIVE!member names) matching this glob; repeatable")
    tr.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    tr.add_argument("--objective", default=None, help="training objective (default: the model's)")
    tr.add_argument("--steps", type=int, metavar="N", help="BLT training steps")
    tr.add_argument("--entropy-steps", type=int, metavar="N", help="entropy model training steps")
    tr.add_argument("--shadow-steps", type=int, metavar="N",
                    help="Linformer shadow masked-LM training steps")
    shadow_opt = tr.add_mutually_exclusive_group()
    shadow_opt.add_argument("--no-shadow", action="store_true",
                            help="train the BLT only (imports then run without the Linformer shadow)")
    shadow_opt.add_argument("--shadow-only", action="store_true",
                            help="add (or retrain) the Linformer shadow of an existing model "
                            "directory, keeping its BLT")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--description", metavar="TEXT",
                    help="what the corpus is, for the model card (default: the paths)")

    ev = sub.add_parser(
        "eval", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="detection quality: fit on a baseline, score test inputs, compare with anchors",
        description="Import --baseline and --test inputs (with embeddings), label attack events "
        "(whole --attack inputs, or the process trees grown from processes whose image or command "
        "line matches --attack-seed; the same trees are dropped from the baseline), fit every "
        "scorer on the clean baseline and report ROC-AUC, average precision, TPR at 1%% FPR and "
        "the share of ordinary test events flagged, beside TF-IDF 1-NN, TF-IDF + KMeans and "
        "Drain3 template rarity on the same canonical texts.",
        epilog="example (one leave-one-capture-out fold):\n  sysmon-blt eval --baseline "
        "otrf/compound/LSASS_campaign_0{2,3,4} --test otrf/compound/LSASS_campaign_01 "
        "--attack-seed winx64_payload --db lsass.duckdb")
    ev.add_argument("--baseline", nargs="+", required=True, metavar="PATH")
    ev.add_argument("--test", nargs="+", required=True, metavar="PATH")
    lab = ev.add_mutually_exclusive_group(required=True)
    lab.add_argument("--attack-seed", metavar="REGEX")
    lab.add_argument("--attack", nargs="+", metavar="PATH", help="inputs whose events are all attack")
    ev.add_argument("--db", metavar="FILE", help="keep the evaluation database here (default: temporary)")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--no-anchors", action="store_true", help="skip the TF-IDF and Drain3 anchors")

    fit = sub.add_parser(
        "fit", parents=[common], help="fit clusters and outlier thresholds on a database's events",
        description="Learn the events stored in --db as normal: KMeans clusters (k given, or "
        "chosen by silhouette) and the nearest-neighbour baseline, with thresholds at a high "
        "quantile of baseline distances; and the context of the default score: the image and "
        "module paths the baseline names (a path none names counts against an event) and the "
        "threshold of surprisal + prevalence + process lineage, walked over the baseline's events "
        "in log order. Writes a new version; run `rescore` to apply it to stored events. Texts "
        "the current fit flags as outliers stay out of the new baseline unless their alert was "
        "marked a false positive or --accept-outliers is given. Fit on a baseline you trust, "
        "never on the evidence.")
    fit.add_argument("--db", metavar="FILE")
    fit.add_argument("--k", type=int, metavar="K", help="clusters (default: chosen by silhouette)")
    fit.add_argument("--quantile", type=float, default=0.99, help="threshold quantile (0.99)")
    fit.add_argument("--accept-outliers", action="store_true")
    fit.add_argument("--json", action="store_true")

    rs = sub.add_parser(
        "rescore", parents=[common], help="re-embed and re-score stored events after a model or fit change",
        description="Embed stored events whose text has no vector of the current model version, "
        "then score every stored event with the latest fit (assignments are replaced).")
    rs.add_argument("--db", metavar="FILE")
    rs.add_argument("--json", action="store_true")

    en = sub.add_parser(
        "enrich", parents=[common], help="alert enrichment: JSON in, JSON out",
        description="Read alerts (one JSON object, or JSON lines; any supported event shape) from "
        "FILE or stdin ('-') and print each with a sysmon_blt block: cluster, calibrated score, "
        "is_outlier, explanation (nearest cluster and medoid, surprising spans, process lineage) "
        "and the 5 nearest stored events by cosine similarity.")
    en.add_argument("file", nargs="?", default="-", metavar="FILE")
    en.add_argument("--db", metavar="FILE")

    sim = sub.add_parser(
        "simulate", parents=[common], help="synthetic Sysmon events for demos and load tests",
        description="Generate realistic Sysmon events from a small simulated fleet. Injected "
        "anomalies are labelled in the side field sysmon_blt_sim, which never reaches the "
        "canonical text the models see.")
    sim.add_argument("--events", type=int, required=True, metavar="N")
    dest = sim.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", metavar="FILE", help="JSON lines file ('-' for stdout)")
    dest.add_argument("--kafka", metavar="HOST:PORT", help="produce to this Kafka broker")
    sim.add_argument("--topic", metavar="T", help="Kafka topic (with --kafka)")
    sim.add_argument("--rate", type=float, metavar="EPS", help="events per second (with --kafka)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--anomaly-rate", type=float, default=0.01, metavar="R")
    sim.add_argument("--shape", choices=["winlogbeat8", "nxlog", "evtxjson", "mixed"],
                     default="winlogbeat8")

    rep = sub.add_parser(
        "report", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="BLT-vs-shadow comparison report (HTML + PNG + summary.json)",
        description="Compare the primary (BLT) and shadow (Linformer) embeddings stored in a database:\n"
        "cosine similarity of random event pairs, KMeans silhouette for k = 2..15, PCA explained\n"
        "variance, agreement of their clusters, outlier flags and scores, detection metrics on\n"
        "labelled events and stored eval runs, and the embedding throughput of past imports.\n"
        "Opens the database read-only; a section without data (one model, no labels) says so.",
        epilog="writes DIR/report.html (self-contained: figures embedded, opens offline), DIR/*.png\n"
        "and DIR/summary.json (every number of the page).\n\nexample:\n"
        "  sysmon-blt report --db case42.duckdb --out case42-report/")
    rep.add_argument("--db", metavar="FILE", help="DuckDB file (default: ./sysmon-blt.duckdb)")
    rep.add_argument("--out", required=True, metavar="DIR", help="folder to write the report to")
    rep.add_argument("--sample", type=int, default=20000, metavar="N",
                     help="events sampled for the vector statistics (default 20000)")
    rep.add_argument("--seed", type=int, default=0, help="sampling and KMeans seed (default 0)")
    rep.add_argument("--json", action="store_true", help="print summary.json to stdout")
    return p


def _verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else args.verbose


def cmd_import(args: argparse.Namespace) -> int:
    from plugin.config import load_config
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import load_embedder, load_shadow, model_stages
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
    embedder = None if args.no_embed else load_embedder(cfg.model)
    shadow = load_shadow(cfg) if embedder is not None else None
    store = open_store(cfg.db, memory_limit=cfg.db_memory_limit)
    try:
        stages = (model_stages(store, embedder, cfg.model, shadow, cfg.shadow_sample_rate)
                  if embedder is not None else [])
        importer = Importer(store, schemas, batch_size=cfg.batch_size, since=args.since,
                            until=args.until, config_hash=cfg.digest(),
                            model_version=embedder.version if embedder else None, stages=stages,
                            progress=not args.quiet, evtx_threads=cfg.evtx_threads)
        summary = importer.run(args.paths)
    finally:
        store.close()
    out = asdict(summary)
    if args.json:
        print(json.dumps(out))
    else:
        width = max(len(k) for k in out)
        for k, v in out.items():
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from plugin import simulate

    if args.events < 0:
        raise UsageError("simulate: --events must be >= 0")
    if not 0.0 <= args.anomaly_rate <= 1.0:
        raise UsageError("simulate: --anomaly-rate must be between 0 and 1")
    if args.kafka:
        if not args.topic:
            raise UsageError("simulate: --kafka needs --topic")
        n = simulate.produce_kafka(args.kafka, args.topic, args.events, rate=args.rate,
                                   seed=args.seed, anomaly_rate=args.anomaly_rate, shape=args.shape)
    else:
        n = simulate.write_jsonl(args.out, args.events, seed=args.seed,
                                 anomaly_rate=args.anomaly_rate, shape=args.shape)
    log.info("simulated", events=n, out=args.out or f"kafka:{args.topic}")
    return 0


SHADOW_CARD_MARK = "<!-- shadow model (Linformer) -->"


def cmd_train(args: argparse.Namespace) -> int:
    from plugin.config import load_config
    from plugin.models.train import train_model_dir
    from plugin.normalize.schema import load_schemas
    from plugin.models.corpus import CorpusStats, iter_texts

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"train: path does not exist: {', '.join(missing)}")
    cfg = load_config(args.config, {})
    stats = CorpusStats()
    texts = list(iter_texts(args.paths, load_schemas(cfg.schemas_dir), args.exclude, stats))
    if not texts:
        raise UsageError("train: no Sysmon events found in the given paths")
    log.info("corpus_ready", events=stats.events, inputs=stats.inputs,
             excluded=stats.excluded_inputs, bad_records=stats.bad_records)
    desc = args.description or (
        f"canonical texts of {stats.events} Sysmon events from {stats.inputs} inputs under "
        f"{', '.join(args.paths)}" + (f", excluding {', '.join(args.exclude)}" if args.exclude else ""))
    from plugin.detect.reference import fit_reference

    out = {"out": args.out, "corpus_events": stats.events}
    if args.shadow_only:
        from plugin.models.checkpoint import ModelDirError, load_blt

        try:
            load_blt(args.out)
        except ModelDirError as exc:
            raise UsageError(f"train --shadow-only: {exc}") from exc
    else:
        kw = {"objective": args.objective} if args.objective else {}
        out.update(train_model_dir(texts, args.out, size=args.size, steps=args.steps,
                                   entropy_steps=args.entropy_steps, seed=args.seed,
                                   progress=not args.quiet, data_description=desc, **kw))
        out["reference_clusters"] = fit_reference(args.out, texts, seed=args.seed)
        log.info("reference_clusters", **out["reference_clusters"])
    if not args.no_shadow:  # the shadow: same corpus, its own tokenizer, weights and clusters
        from plugin.models.checkpoint import CARD
        from plugin.models.embedder import BLTEmbedder
        from plugin.models.linformer_train import linformer_card_section, train_linformer

        shadow = train_linformer(texts, args.out, dim=BLTEmbedder.from_dir(args.out).dim,
                                 steps=args.shadow_steps, seed=args.seed, progress=not args.quiet)
        out["shadow"] = shadow
        out["shadow_reference_clusters"] = fit_reference(args.out, texts, seed=args.seed,
                                                         model="linformer")
        card = Path(args.out) / CARD
        text = card.read_text() if card.is_file() else ""
        text = text.split(SHADOW_CARD_MARK)[0].rstrip("\n")  # a retrained shadow replaces its section
        ref = out["shadow_reference_clusters"]
        card.write_text(
            f"{text}\n\n{SHADOW_CARD_MARK}\n{linformer_card_section(shadow).rstrip()}\n"
            f"- `linformer.clusters.safetensors`: {ref['k']} KMeans centroids (k by silhouette) "
            f"with per-cluster thresholds at the {ref['quantile']} quantile of training distances, "
            f"on {ref['texts']:,} distinct texts weighted by their {ref['events']:,} events "
            "(numbers only)\n"
            f"- reproduce (the shadow alone, into a model directory holding its BLT): "
            f"`sysmon-blt train {' '.join(args.paths)} "
            + "".join(f"--exclude '{g}' " for g in args.exclude)
            + f"--out {args.out} --shadow-only --seed {args.seed}`\n")
    print(json.dumps(out, default=str))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import re
    import tempfile

    from plugin.config import load_config
    from plugin.detect.evaluate import EvalSpec, evaluate, format_table
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import embed_stages, load_embedder, load_shadow
    from plugin.pipeline.importer import Importer
    from plugin.pipeline.rescore import rescore
    from plugin.store import open_store

    paths = args.baseline + args.test + (args.attack or [])
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"eval: path does not exist: {', '.join(missing)}")
    if args.attack_seed:
        try:
            re.compile(args.attack_seed)
        except re.error as exc:
            raise UsageError(f"eval: --attack-seed is not a valid regex: {exc}") from exc
    cfg = load_config(args.config, {"db": args.db, "model": args.model})
    embedder = load_embedder(cfg.model)
    if embedder is None:
        raise UsageError("eval: needs a model (none shipped here); pass --model")
    tmp = None
    db = args.db
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="sysmon-blt-eval-")
        db = str(Path(tmp.name) / "eval.duckdb")
    shadow = load_shadow(cfg)
    store = open_store(db, memory_limit=cfg.db_memory_limit)
    try:
        stages = embed_stages(store, (embedder, shadow), cfg.model)
        Importer(store, load_schemas(cfg.schemas_dir), stages=stages, config_hash=cfg.digest(),
                 model_version=embedder.version, progress=not args.quiet, command="eval").run(paths)
        # events an earlier eval imported are skipped above; a model they were not embedded
        # with (another --model on the same --db) still needs their vectors
        lacking = [m.name for m in filter(None, (embedder, shadow))
                   if store.events_lacking_vectors(m.name, m.version)]
        if lacking:
            log.info("eval_embedding_stored_events", models=lacking)
            rescore(store, stages, batch_size=cfg.batch_size)
        res = evaluate(store, EvalSpec(baseline=args.baseline, test=args.test + (args.attack or []),
                                       attack_seed=args.attack_seed, attack=args.attack or [],
                                       model=embedder.name, model_version=embedder.version,
                                       shadow_version=shadow.version if shadow else "",
                                       anchors=not args.no_anchors), embedder=embedder)
    finally:
        store.close()
        if tmp is not None:
            tmp.cleanup()
    res["db"] = args.db
    print(json.dumps(res) if args.json else format_table(res))
    return 0


def _existing_db_and_model(command: str, args: argparse.Namespace):
    """Config, and the embedder, for commands that work on an existing database."""
    from plugin.config import load_config

    from plugin.pipeline.assemble import load_embedder

    cfg = load_config(args.config, {"db": args.db, "model": args.model})
    if not Path(cfg.db).is_file():
        raise UsageError(f"{command}: database {cfg.db} does not exist")
    embedder = load_embedder(cfg.model)
    if embedder is None:
        raise UsageError(f"{command}: needs a model; pass --model")
    return cfg, embedder


def cmd_fit(args: argparse.Namespace) -> int:
    from plugin.detect.fitting import fit_database
    from plugin.pipeline.assemble import load_shadow
    from plugin.store import open_store

    if not 0.5 <= args.quantile < 1.0:
        raise UsageError("fit: --quantile must be in [0.5, 1)")
    cfg, embedder = _existing_db_and_model("fit", args)
    store = open_store(cfg.db, memory_limit=cfg.db_memory_limit)
    shadow = load_shadow(cfg)
    try:
        res = fit_database(store, embedder.name, embedder.version, k=args.k,
                           quantile=args.quantile, accept_outliers=args.accept_outliers,
                           embedder=embedder)
        if shadow is not None:  # the shadow learns the same baseline, by its own vectors
            try:
                res["shadow"] = fit_database(store, shadow.name, shadow.version, k=args.k,
                                             quantile=args.quantile,
                                             accept_outliers=args.accept_outliers,
                                             flags_of=embedder.name)
            except ValueError as exc:
                log.warning("shadow_not_fitted", model=shadow.name, reason=str(exc))
                res["shadow"] = {"model": shadow.name, "error": str(exc)}
    except ValueError as exc:
        raise UsageError(f"fit: {exc}") from exc
    finally:
        store.close()
    print(json.dumps(res) if args.json else "\n".join(f"{k:<24} {v}" for k, v in res.items()))
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from plugin.pipeline.assemble import load_shadow, model_stages
    from plugin.pipeline.rescore import rescore
    from plugin.store import open_store

    cfg, embedder = _existing_db_and_model("rescore", args)
    store = open_store(cfg.db, memory_limit=cfg.db_memory_limit)
    try:
        res = rescore(store, model_stages(store, embedder, cfg.model, load_shadow(cfg),
                                          cfg.shadow_sample_rate), batch_size=cfg.batch_size)
    finally:
        store.close()
    print(json.dumps(res) if args.json else "\n".join(f"{k:<16} {v}" for k, v in res.items()))
    return 0


def cmd_enrich(args: argparse.Namespace) -> int:
    import orjson

    from plugin.detect.enrich import Enricher
    from plugin.detect.explain import make_explainer
    from plugin.detect.fitting import load_scorer
    from plugin.normalize.schema import load_schemas
    from plugin.normalize.text import CanonicalText
    from plugin.resources import default_model_dir
    from plugin.store import open_store

    if args.file != "-" and not Path(args.file).is_file():
        raise UsageError(f"enrich: {args.file} does not exist")
    cfg, embedder = _existing_db_and_model("enrich", args)
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        docs = [orjson.loads(raw)]
    except orjson.JSONDecodeError:
        docs = []
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                docs.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise UsageError(f"enrich: line {i + 1} is not JSON: {exc}") from exc
    if len(docs) == 1 and isinstance(docs[0], list):
        docs = docs[0]
    store = open_store(cfg.db, read_only=True)
    try:
        loaded = load_scorer(store, embedder.name, embedder.version,
                             Path(cfg.model) if cfg.model else default_model_dir(), record=False,
                             embedder=embedder)
        explain = make_explainer(loaded, embedder, store.texts_by_hash) if loaded else None
        enricher = Enricher(store, CanonicalText(load_schemas(cfg.schemas_dir)), embedder, loaded, explain)
        for doc in docs:
            if not isinstance(doc, dict):
                print(json.dumps({"sysmon_blt": {"error": "an alert must be a JSON object"}}))
                continue
            print(json.dumps(enricher.enrich(doc), default=str))
    finally:
        store.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from plugin.config import load_config
    from plugin.report.compare import build_report
    from plugin.store import open_store

    if args.sample < 2:
        raise UsageError("report: --sample must be at least 2")
    cfg = load_config(args.config, {"db": args.db})
    if not Path(cfg.db).is_file():
        raise UsageError(f"report: database {cfg.db} does not exist (--db)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"report: --out {out} is a file, not a folder")
    store = open_store(cfg.db, read_only=True)
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


COMMANDS = {"enrich": cmd_enrich, "report": cmd_report, "fit": cmd_fit, "rescore": cmd_rescore, "eval": cmd_eval, "import": cmd_import, "simulate": cmd_simulate, "train": cmd_train}


def main(argv: Sequence[str] | None = None) -> int:
    from plugin.logs import configure

    parser = build_parser()
    args = parser.parse_args(argv)
    configure(_verbosity(args))
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"sysmon-blt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sysmon-blt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a runtime failure: say what, keep the traceback for -v
        from plugin.store import is_out_of_memory

        if is_out_of_memory(exc):  # DuckDB's buffer pool is full
            print(f"sysmon-blt: {args.command} failed: DuckDB needs more memory than "
                  "db_memory_limit allows (its key indexes grow with the database): raise it, "
                  "e.g. SYSMON_BLT_DB_MEMORY_LIMIT=2GB, and run the same command again (inputs "
                  "already imported are skipped)", file=sys.stderr)
            return 1
        log.error("command_failed", command=args.command, error=f"{type(exc).__name__}: {exc}",
                  exc_info=args.verbose > 0)
        print(f"sysmon-blt: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
