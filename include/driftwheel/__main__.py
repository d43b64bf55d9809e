"""``python -m driftwheel``: the command line lives in the operations package, which uses this one."""

import sys

from driftwheel_ops.cli import main

sys.exit(main())
