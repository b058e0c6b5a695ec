"""`python -m plugin.cli`: the same as the `sysmon-blt` script."""

import sys

from plugin.cli import main

sys.exit(main())
