"""``python -m worker`` is ``lovense-worker``."""

import sys

from worker.cli import main

sys.exit(main())
