"""The one error type the command line turns into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A user-facing failure: bad input or an unreachable target (printed as one line).

    Example::

        raise CLIError(f"cannot connect to {target.label}: {target.describe_error(exc)}")
    """
