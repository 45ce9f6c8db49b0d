"""User-facing errors, and the one way mmmo says any error in one line."""

from __future__ import annotations

import traceback

ONE_LINE_LIMIT = 300  # characters: a journal field, a table cell or a terminal line, not a traceback


class MmmoError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class SpecError(MmmoError):
    """The search spec (YAML) is invalid; the message names the field."""


def one_line(problem: BaseException | str, limit: int = ONE_LINE_LIMIT) -> str:
    """`problem` as one line: every run of whitespace (newlines included) becomes one space, and text longer than
    `limit` characters is cut there and ends in "…".

    An exception reads `Type: message`; one without a message (a bare `assert`) says instead where it was raised,
    `Type at file:line`, when it carries a traceback.
    """
    if isinstance(problem, BaseException):
        message = " ".join(str(problem).split())
        name = type(problem).__name__
        if not message:
            frames = traceback.extract_tb(problem.__traceback__)[-1:] if problem.__traceback__ else []
            return name + "".join(f" at {f.filename}:{f.lineno}" for f in frames)
        text = f"{name}: {message}"
    else:
        text = " ".join(problem.split())
    return text if len(text) <= limit else text[:limit] + "…"
