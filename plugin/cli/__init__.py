"""`sysmon-blt`: the command line. Logs and progress go to stderr; data and --json to stdout.

Exit codes: 0 the run did its job (dead letters included), 1 runtime failure, 2 usage or
configuration error (the message names the bad flag, key or file).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Sequence

import structlog

from plugin.cli.export import cmd_export
from plugin.cli.ingest import cmd_import, cmd_simulate
from plugin.cli.maintain import cmd_maintain
from plugin.cli.modeling import SHADOW_CARD_MARK, cmd_eval, cmd_fit, cmd_rescore, cmd_train
from plugin.cli.parser import build_parser, merge_globals
from plugin.cli.stream import cmd_consume, cmd_serve
from plugin.cli.triage import cmd_alerts, cmd_enrich, cmd_incidents, cmd_prune, cmd_report
from plugin.errors import Unavailable, UsageError

__all__ = ["SHADOW_CARD_MARK", "build_parser", "main"]

log = structlog.get_logger("sysmon_blt")

COMMANDS: dict[str, Callable] = {
    "import": cmd_import, "simulate": cmd_simulate, "train": cmd_train, "fit": cmd_fit,
    "rescore": cmd_rescore, "eval": cmd_eval, "enrich": cmd_enrich, "alerts": cmd_alerts,
    "report": cmd_report, "consume": cmd_consume, "serve": cmd_serve,
    "prune": cmd_prune, "maintain": cmd_maintain, "incidents": cmd_incidents,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    from plugin.logs import configure

    parser = build_parser()
    args = merge_globals(parser.parse_args(argv))
    configure(-1 if args.quiet else args.verbose)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"sysmon-blt: error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"sysmon-blt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sysmon-blt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`| head`): what was asked is done (an import is
        # stored); stop writing, quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a runtime failure: say what, keep the traceback for -v
        from plugin.store import is_disk_full, is_out_of_memory
        from plugin.store.lake import redact_dsn

        # a database client's error may repeat the connection string it failed with
        what = redact_dsn(f"{type(exc).__name__}: {exc}")
        extra = {"traceback": redact_dsn(traceback.format_exc())} if args.verbose > 0 else {}
        log.error("command_failed", command=args.command, error=what, **extra)
        if is_out_of_memory(exc):  # DuckDB's buffer pool is full
            key = "stream_db_memory_limit" if args.command == "consume" else "db_memory_limit"
            print(f"sysmon-blt: {args.command} failed: DuckDB needs more memory than "
                  f"{key} allows: raise it, "
                  f"e.g. SYSMON_BLT_{key.upper()}=2GB, and run the same command again (what "
                  "was stored or committed is not done twice)", file=sys.stderr)
            return 1
        if is_disk_full(exc):
            print(f"sysmon-blt: {args.command} failed: the disk is full: {redact_dsn(str(exc))}. Nothing of the "
                  "failed batch was stored or committed; free space and run the same command "
                  "again (what was stored or committed is not done twice)", file=sys.stderr)
            return 1
        print(f"sysmon-blt: {args.command} failed: {what}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
