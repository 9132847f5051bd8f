"""Entry point for ``python -m shipper``."""

from __future__ import annotations

import sys

from shipper.cli import main

sys.exit(main())
