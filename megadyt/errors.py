"""The project's error type for user mistakes.

A `MegadytError` is something the user can fix (a bad config key, a missing file); the CLI prints
its one-line message and exits with code 2 instead of showing a traceback (unless `--debug`).
"""


class MegadytError(Exception):
    """A user-facing error: one line that names the culprit and the fix."""

    exit_code = 2


class ConfigError(MegadytError):
    """Raised for an invalid configuration value, key or combination."""
