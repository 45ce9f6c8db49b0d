"""Keep third-party progress bars and mmmo's expected numerical warnings out of mmmo's own output.

Imports nothing heavy: tqdm is imported only when a quiet block is entered.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

# Whether the warnings mmmo expects (and hides by default) are shown: set by `quiet_libraries(verbose=True)`.
_show_expected: ContextVar[bool] = ContextVar("mmmo_show_expected_warnings", default=False)
# tqdm reads TQDM_* variables when it is imported: child processes started inside a quiet block (the demo's
# expert trainers, a local Ray cluster's workers) import it afresh and start quiet.
_CHILD_ENV = {"TQDM_DISABLE": "1"}
# Index of `disable` among tqdm.__init__'s positional parameters (after self); its order has not changed in years.
_DISABLE_POSITION = 10


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Inside the block, no third-party progress bar is drawn; `verbose` draws them and shows expected warnings.

    What prints otherwise, all through tqdm: transformers' "Loading weights" / "Writing model shards",
    datasets' "Generating test split" and lm-eval's bare request-building bar. The libraries' own switches
    do not cover lm-eval's bar, and they miss a library first imported inside the block (mmmo imports them
    lazily), so tqdm itself is told to stay quiet, in this process and in the child processes the block
    starts. Everything is restored on exit; other threads' bars are hidden while the block runs.
    """
    if verbose:
        token = _show_expected.set(True)
        try:
            yield
        finally:
            _show_expected.reset(token)
        return
    with _tqdm_disabled(), _child_env(_CHILD_ENV):
        yield


@contextlib.contextmanager
def expected_warnings(*expected: tuple[type[Warning], str]) -> Iterator[None]:
    """Hide the named warnings, `(category, message regex)`, inside the block: mmmo expects them there and a
    user can do nothing about them. Shown again inside `quiet_libraries(verbose=True)` (--verbose, --debug)."""
    with warnings.catch_warnings():
        if not _show_expected.get():
            for category, message in expected:
                warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def _tqdm_disabled() -> Iterator[None]:
    from tqdm import std  # before _child_env sets TQDM_DISABLE, which would stick to a first import

    cls = std.tqdm
    saved = cls.__dict__["__init__"]  # the raw descriptor (tqdm wraps __init__ in a partialmethod)
    original = cls.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > _DISABLE_POSITION:
            args = (*args[:_DISABLE_POSITION], True, *args[_DISABLE_POSITION + 1 :])
        else:
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    cls.__init__ = quiet_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__init__ = saved  # type: ignore[method-assign]


@contextlib.contextmanager
def _child_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables the user has not set, for the block's duration."""
    added = [k for k in values if k not in os.environ]
    for key in added:
        os.environ[key] = values[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
