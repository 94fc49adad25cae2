"""Errors that mean "the user asked for something wrong" versus bugs.

The CLI prints a :class:`UserError` as one paragraph and exits with code 2,
without a traceback; anything else is a bug and exits with code 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: an unknown name, a mistyped value, a missing or corrupt file."""


class ConfigError(UserError, ValueError):
    """A configuration key or value does not fit the dataclass it targets."""


class DataError(UserError):
    """A dataset is missing, laid out wrongly, or corrupt."""


class DivergenceError(UserError):
    """Training produced a non-finite loss."""
