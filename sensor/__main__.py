"""Allow ``python3 -m sensor``."""

from __future__ import annotations

import sys

from sensor.cli import main

sys.exit(main())
