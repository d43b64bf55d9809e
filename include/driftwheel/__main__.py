import sys

from driftwheel.cli import main

sys.exit(main())
