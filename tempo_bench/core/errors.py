"""The failures a user can fix, and how a command reports them.

Every user-facing command turns these into one line, ``error: ...``, and exit code 2, before any
MLflow run is created where it can; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """An expected failure, phrased for the person who can fix it."""

class ConfigError(UserError):
    """A configuration problem, phrased for the person who wrote the config."""


class DataError(UserError):
    """A file the run reads is missing, unreadable or malformed (the message names file and line)."""


class StorageError(UserError):
    """A folder, tracking store or Optuna storage cannot be reached, created or written (the
    message names the path or URL)."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) reached a command; the message says what was kept and the one command
    that continues the work."""
