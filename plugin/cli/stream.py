"""`consume`: the SOC deployment's long-lived Kafka consumer."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import asdict

import structlog

from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")


def cmd_consume(args: argparse.Namespace) -> int:
    from plugin.config import load_config
    from plugin.normalize.normalizer import Normalizer
    from plugin.normalize.schema import load_schemas
    from plugin.pipeline.assemble import load_embedder, load_shadow, model_stages
    from plugin.store import open_store
    from plugin.stream.consumer import StreamConsumer
    from plugin.stream.publish import AlertPublisher

    cfg = load_config(args.config, {"db": args.db, "model": args.model})
    if ":" not in args.bootstrap:
        raise UsageError(f"consume: --bootstrap {args.bootstrap!r}: expected HOST:PORT")
    embedder = load_embedder(cfg.model)
    shadow = load_shadow(cfg) if embedder is not None else None
    store = open_store(cfg.db, memory_limit=cfg.db_memory_limit)
    producer = None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stages = (model_stages(store, embedder, cfg.model, shadow, cfg.shadow_sample_rate)
                  if embedder is not None else [])
        if args.alerts_topic and embedder is not None:
            from confluent_kafka import Producer

            from plugin.stream.consumer import _quiet_logger

            producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5,
                                 "logger": _quiet_logger(), **cfg.kafka})
            stages.append(AlertPublisher(producer, args.alerts_topic, store, embedder.name,
                                         embedder.version))
        consumer = StreamConsumer(store, Normalizer(load_schemas(cfg.schemas_dir)), stages,
                                  bootstrap=args.bootstrap, topics=args.topic, group=args.group,
                                  settings=cfg.kafka, batch_size=cfg.stream_batch_size,
                                  batch_ms=cfg.stream_batch_ms, producer=producer)
        summary = consumer.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if producer is not None:
            producer.flush(10)
        store.close()
    out = asdict(summary)
    log.info("consumer_stopped", **{k: v for k, v in out.items() if k != "committed"})
    print(json.dumps(out))
    return 0
