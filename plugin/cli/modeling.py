"""Commands that build and judge models: train, fit, rescore, eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import structlog

from plugin.cli.common import existing_db, existing_db_and_model, format_result
from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")


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


def cmd_fit(args: argparse.Namespace) -> int:
    from plugin.detect.fitting import fit_database
    from plugin.pipeline.assemble import load_shadow
    from plugin.store import open_store

    if not 0.5 <= args.quantile < 1.0:
        raise UsageError("fit: --quantile must be in [0.5, 1)")
    cfg, embedder = existing_db_and_model("fit", args)
    store = open_store(cfg.db, data_path=cfg.lake_data_path, memory_limit=cfg.db_memory_limit)
    shadow = load_shadow(cfg)
    try:
        # the first fit of a store learns all of it: the user imported this baseline and vouches
        # for it (holding back the cold start's flags taught "chrome.exe is new" on a clean fleet);
        # a refit holds back what the current fit flags, as the learning period's own fit does
        first = store.latest_fit(embedder.name, embedder.version) is None
        accept = first if args.accept_outliers is None else args.accept_outliers
        res = fit_database(store, embedder.name, embedder.version, k=args.k,
                           quantile=args.quantile, accept_outliers=accept,
                           embedder=embedder)
        res["first_fit"] = first
        if shadow is not None:  # the shadow learns the same baseline, by its own vectors
            try:
                res["shadow"] = fit_database(store, shadow.name, shadow.version, k=args.k,
                                             quantile=args.quantile,
                                             accept_outliers=accept,
                                             flags_of=embedder.name)
            except ValueError as exc:
                log.warning("shadow_not_fitted", model=shadow.name, reason=str(exc))
                res["shadow"] = {"model": shadow.name, "error": str(exc)}
    except ValueError as exc:
        raise UsageError(f"fit: {exc}") from exc
    finally:
        store.close()
    print(json.dumps(res) if args.json else format_result(res))
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from plugin.pipeline.assemble import configured_stages, load_models
    from plugin.pipeline.rescore import rescore
    from plugin.pipeline.settle import settle_case
    from plugin.store import open_store

    cfg = existing_db("rescore", args)
    embedder, shadow, pool = load_models(cfg)
    if embedder is None:
        raise UsageError("rescore: needs a model; pass --model")
    store = None
    try:
        store = open_store(cfg.db, data_path=cfg.lake_data_path, memory_limit=cfg.db_memory_limit)

        def make_stages() -> list:
            return configured_stages(store, cfg, embedder, shadow, pool)

        stages = make_stages()
        res = rescore(store, stages, batch_size=cfg.batch_size)
        # no fit: the first walk learned the whole case's thresholds, the second judges by them,
        # as `import` does (the two never disagree on a score)
        settled = settle_case(store, stages, make_stages, whole_case=True,
                              batch_size=cfg.batch_size)
        if settled is not None:
            res = {"events": res["events"], "seconds": round(res["seconds"] + settled["seconds"], 2),
                   "stages": settled["stages"], "settled": {"events": settled["events"],
                                                                 "seconds": settled["seconds"]}}
    finally:
        if pool is not None:
            pool.close()
        if store is not None:
            store.close()
    print(json.dumps(res) if args.json else format_result(res))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import re
    import tempfile

    from plugin.config import load_config
    from plugin.detect.evaluate import EvalSpec, evaluate, format_table
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import embed_stages, load_embedder, load_shadow, open_pool
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
    store = open_store(db, data_path=cfg.lake_data_path, memory_limit=cfg.db_memory_limit)
    pool = None
    try:
        pool = open_pool(cfg, embedder, shadow)
        stages = embed_stages(store, (embedder, shadow), cfg.model, pool)
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
        if pool is not None:
            pool.close()
        store.close()
        if tmp is not None:
            tmp.cleanup()
    res["db"] = args.db
    print(json.dumps(res) if args.json else format_table(res))
    return 0
