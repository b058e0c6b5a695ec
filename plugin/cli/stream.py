"""`consume`: the SOC deployment's long-lived Kafka consumer."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable

import structlog

from plugin.errors import UsageError

if TYPE_CHECKING:  # the command imports its modules when it runs
    from plugin.config import Config
    from plugin.models.embedder import BLTEmbedder
    from plugin.models.linformer_embedder import LinformerEmbedder
    from plugin.pipeline.batch import BatchStage
    from plugin.pipeline.fitwatch import FitWatcher
    from plugin.store import Store
    from plugin.stream.learning import LearningPeriod
    from plugin.stream.metrics import StreamMetrics

log = structlog.get_logger("sysmon_blt")


def cmd_consume(args: argparse.Namespace) -> int:
    from plugin.config import load_config
    from plugin.normalize.normalizer import Normalizer
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import configured_stages, load_models
    from plugin.store import open_store
    from plugin.service.server import BackgroundServer, parse_listen
    from plugin.stream.consumer import StreamConsumer
    from plugin.stream.metrics import StreamMetrics
    from plugin.stream.publish import AlertPublisher, DeadLetterPublisher

    cfg = load_config(args.config, {"db": args.db, "model": args.model})
    if ":" not in args.bootstrap:
        raise UsageError(f"consume: --bootstrap {args.bootstrap!r}: expected HOST:PORT")
    listen = parse_listen(args.serve) if args.serve else None
    embedder, shadow, pool = ((None, None, None) if args.no_embed
                              else load_models(cfg, spare_core=True))
    metrics = StreamMetrics()
    store = producer = server = http_store = enricher = None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        store = open_store(cfg.db, data_path=cfg.lake_data_path,
                           memory_limit=cfg.stream_db_memory_limit, long_running=True)
        stages = (configured_stages(store, cfg, embedder, shadow, pool,
                                    cache_texts=cfg.stream_cache_texts)
                  if embedder is not None else [])
        if args.dead_letter_topic or (args.alerts_topic and embedder is not None):
            from confluent_kafka import Producer

            from plugin.sources.kafka import quiet_logger

            producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5,
                                 "logger": quiet_logger(), **cfg.kafka})
        if args.dead_letter_topic:
            stages.append(DeadLetterPublisher(producer, args.dead_letter_topic))
        if args.alerts_topic and embedder is not None:
            stages.append(AlertPublisher(producer, args.alerts_topic, store, embedder.name,
                                         embedder.version, quiet_minutes=cfg.alert_quiet_minutes,
                                         rate_per_host=cfg.alert_rate_per_host))
        if listen is not None:
            if embedder is None:
                raise UsageError("consume --serve: enrichment needs a model; pass --model")
            http_store = store.for_thread()
            warn_open(listen[0], cfg.service_token)
            enricher = enricher_of(http_store, cfg, embedder)
            server = BackgroundServer(service_app(http_store, cfg, embedder, metrics, enricher),
                                      *listen)
            server.start()
        learning = None
        primary = next((st for st in stages if getattr(st, "case", None) is not None), None)
        if primary is not None and cfg.learning_events > 0:  # cold start: no fit in this store
            from plugin.pipeline.assemble import finish_learning
            from plugin.stream.learning import LearningPeriod

            primary.alert_bar = cfg.learning_bar
            learning = LearningPeriod(
                store, hours=cfg.learning_hours, events=cfg.learning_events,
                finish=lambda: finish_learning(store, stages, embedder, shadow, cfg.model))
            metrics.learning.set(1)
        if embedder is not None and cfg.fit_poll_seconds > 0:
            watcher = watch_fits(store, stages, embedder, shadow, cfg, metrics, learning)
            if enricher is not None:  # /enrich scores with the fit the stages now use
                from plugin.pipeline.assemble import model_dir_of

                watcher.on_switch(lambda model, old, new: enricher.use_latest_fit(
                    model_dir_of(cfg)) if model == embedder.name else None)
            stages.insert(0, watcher)
        normalizer = Normalizer(load_schemas(cfg.schemas_dir), cfg.stream_cache_texts)
        consumer = StreamConsumer(store, normalizer, stages,
                                  bootstrap=args.bootstrap, topics=args.topic, group=args.group,
                                  settings=cfg.kafka, batch_size=cfg.stream_batch_size,
                                  batch_ms=cfg.stream_batch_ms, producer=producer, metrics=metrics,
                                  retention_days=cfg.retention_days, learning=learning)
        summary = consumer.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
        if http_store is not None:
            http_store.close()
        if producer is not None:
            producer.flush(10)
        if pool is not None:
            pool.close()
        if store is not None:
            store.close()
    out = asdict(summary)
    log.info("consumer_stopped", **{k: v for k, v in out.items() if k != "committed"})
    print(json.dumps(out))
    return 0


def watch_fits(store: Store, stages: list[BatchStage], embedder: BLTEmbedder,
               shadow: LinformerEmbedder | None, cfg: Config, metrics: StreamMetrics,
               learning: LearningPeriod | None,
               clock: Callable[[], float] = time.monotonic) -> FitWatcher:
    """The fit watcher for the consumer's stages (first of them, so a batch is scored wholly
    with one fit): counts each fit picked up, and a pick-up of the primary's ends a learning
    period without a fit here. ``clock``: monotonic seconds (tests inject one)."""
    from plugin.pipeline.assemble import fit_watcher

    watcher = fit_watcher(store, stages, embedder, shadow, cfg.model, cfg.fit_poll_seconds,
                          clock)

    def picked_up(model: str, old: int, new: int) -> None:
        metrics.fits_picked_up.labels(model).inc()
        if learning is not None and model == embedder.name and learning.adopted(new):
            metrics.learning.set(0)

    watcher.on_switch(picked_up)
    return watcher


def enricher_of(store, cfg, embedder):
    """The enricher over ``store``: its latest fit, the model directory's shipped clusters."""
    from plugin.detect.enrich import Enricher
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import model_dir_of

    return Enricher.for_store(store, embedder, model_dir_of(cfg), load_schemas(cfg.schemas_dir))


def service_app(store, cfg, embedder, metrics, enricher=None):
    """The HTTP app over ``store`` with the model directory's enricher."""
    from plugin.service.app import ServiceSettings, build_app

    return build_app(store, enricher or enricher_of(store, cfg, embedder), metrics,
                     ServiceSettings(token=cfg.service_token, max_body=cfg.service_max_body,
                                     report_dir=cfg.service_report_dir))


def warn_open(host: str, token: str | None) -> None:
    """Say so when the service listens beyond loopback with no token: anyone who reaches the
    port can then read the alerts and mark them."""
    if token is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("http_without_token", host=host,
                    hint="set service_token (or SYSMON_BLT_SERVICE_TOKEN) to require one")


def cmd_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from plugin.cli.common import existing_db_and_model
    from plugin.service.server import parse_listen
    from plugin.store import open_store
    from plugin.stream.metrics import StreamMetrics

    host, port = parse_listen(f"{args.host}:{args.port}")
    cfg, embedder = existing_db_and_model("serve", args)
    # concurrent requests are this process's parallelism, one model pass per core: torch's own
    # threads on top of them oversubscribe a small machine (benchmarks/enrich_latency.py on 2
    # shared cores: p99 160-210 ms against 190-260 with 2 threads; the same vectors either way)
    torch.set_num_threads(1)
    store = open_store(cfg.db, data_path=cfg.lake_data_path,
                       memory_limit=cfg.db_memory_limit, long_running=True)
    try:
        app = service_app(store, cfg, embedder, StreamMetrics(needs_group=False))
        warn_open(host, cfg.service_token)
        log.info("http_serving", host=host, port=port, db=cfg.db,
                 token=cfg.service_token is not None)
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the
        # handler it found: with the default one the process dies with 143 after a clean stop,
        # and a supervisor (systemd, Docker) reports a failure. A handler that does nothing
        # makes that second delivery a no-op, so a requested stop exits 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        log.info("http_stopped", db=cfg.db)
    finally:
        store.close()
    return 0
