"""User-facing errors, and the one way mmmo says any error in one line."""

from __future__ import annotations

import re
import traceback

from pydantic import ValidationError

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


def _loc_part(part: str | int) -> str:
    """One step of a field's location: as written when it is a plain name or index, else quoted (a key such as
    ':' or one with a line break in it is the user's typo, shown as such)."""
    return str(part) if re.fullmatch(r"[\w-]+", str(part)) else repr(part)


def validation_message(err: ValidationError) -> str:
    """A pydantic validation error as one line: where (`merge.weight_bounds: ...`) and what, and how many more."""
    first = err.errors()[0]
    loc = ".".join(_loc_part(p) for p in first["loc"])
    msg = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "literal_error":
        msg = f"got {first.get('input')!r}: {msg.lower()}"
    where = f"{loc}: " if loc else ""
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return one_line(f"{where}{msg}{more}")  # a value quoted in msg may hold line breaks
