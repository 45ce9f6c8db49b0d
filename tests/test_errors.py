"""Every error said in one line, the same way: `errors.one_line`."""

from __future__ import annotations

from mmmo.runtime.errors import one_line


def test_an_exception_is_its_type_and_message_on_one_line() -> None:
    err = RuntimeError("CUDA out of memory.\n  Tried to allocate\t2.00 GiB\n")
    assert one_line(err) == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_long_text_is_cut_at_the_limit_and_marked() -> None:
    assert one_line("a b " * 100, limit=10) == "a b a b a " + "…"
    assert one_line("short", limit=10) == "short"


def test_an_exception_without_a_message_says_where_it_was_raised() -> None:
    try:
        raise AssertionError
    except AssertionError as err:
        text = one_line(err)
    assert text.startswith(f"AssertionError at {__file__}:")
    assert one_line(ValueError()) == "ValueError"  # never raised: no traceback to point at
