"""``python -m worker.cli``: the same command line as ``exolegs``."""

from __future__ import annotations

import sys

from worker.cli import main

sys.exit(main())
