"""`sysmon-blt` (the installed command) and `python -m plugin`: the allocator first, then the
command line. Kept apart from `plugin.cli` so that starting again with jemalloc
(`plugin.memory.relaunch_with_allocator`) happens before the command line's imports, not after
them (half a second each time)."""

from __future__ import annotations

import sys


def run() -> int:
    from plugin.memory import relaunch_with_allocator

    failed = relaunch_with_allocator()
    if failed is not None:
        return failed
    from plugin.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
