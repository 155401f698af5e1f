"""``python -m poolkit.cli``: the same as the ``poolkit`` command."""

from __future__ import annotations

import sys

from poolkit.cli._main import main

if __name__ == "__main__":
    sys.exit(main())
