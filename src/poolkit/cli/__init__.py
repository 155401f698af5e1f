"""The ``poolkit`` command: ``poolkit bench [TARGET]`` and ``poolkit demo``.

Example::

    $ pip install 'poolkit[cli]'
    $ poolkit bench --quick
"""

from __future__ import annotations

from poolkit.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
