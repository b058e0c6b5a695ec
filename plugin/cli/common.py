"""What several commands share: an existing database and its model."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from plugin.errors import UsageError

log = structlog.get_logger("sysmon_blt")


def existing_db(command: str, args: argparse.Namespace):
    """Config for commands that work on an existing database; a usage error naming --db when
    the file is not there (opening would create an empty one)."""
    from plugin.config import load_config

    cfg = load_config(args.config, {"db": args.db, "model": getattr(args, "model", None)})
    from plugin.store.lake import is_lake

    if not is_lake(cfg.db) and not Path(cfg.db).is_file():
        raise UsageError(f"{command}: database {cfg.db} does not exist (--db)")
    return cfg


def existing_db_and_model(command: str, args: argparse.Namespace):
    """Config, and the embedder, for commands that work on an existing database."""
    from plugin.pipeline.assemble import load_embedder

    cfg = existing_db(command, args)
    embedder = load_embedder(cfg.model)
    if embedder is None:
        raise UsageError(f"{command}: needs a model; pass --model")
    return cfg, embedder


def format_result(result: dict, indent: str = "") -> str:
    """A nested result (fit, rescore) as aligned `key  value` lines, nested dicts indented under
    their key and lists of dicts one line each: what a person reads instead of a Python repr."""
    width = max((len(str(k)) for k in result), default=0)
    lines = []
    for k, v in result.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}")
            lines.append(format_result(v, indent + "  "))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"{indent}{k}")
            for x in v:
                lines.append(f"{indent}  - " + ", ".join(f"{a}={b}" for a, b in x.items()))
        else:
            lines.append(f"{indent}{str(k):<{width}}  {v}")
    return "\n".join(lines)
