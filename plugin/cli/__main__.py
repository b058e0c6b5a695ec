"""`python -m plugin.cli`: the same as the `sysmon-blt` script, allocator choice included."""

import sys

from plugin.cli import main
from plugin.memory import relaunch_with_allocator

failed = relaunch_with_allocator()
sys.exit(failed if failed is not None else main())
