"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class MmmoError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class SpecError(MmmoError):
    """The search spec (YAML) is invalid; the message names the field."""
