"""``python -m qfast.assets``: list, fetch and locate the assets (see :func:`qfast.assets.main`)."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
