"""What the fuzz tests (tests/test_fuzz_*.py) share: how hard they try, hostile values, and what an error must be.

The fast suite runs each property on a fixed seed (`derandomize`) and FUZZ_EXAMPLES examples;
`MMMO_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_*.py` is the longer run. No example database is written
(`database=None`): a failure prints its minimal example, which then becomes an explicit regression case.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mmmo.runtime.errors import MmmoError

# Hypothesis keeps caches (unicode tables, constants) in a folder: the project's cache, not .hypothesis/ in the cwd.
set_hypothesis_home_dir(Path(__file__).resolve().parent.parent / ".cache" / "hypothesis")
FUZZ_EXAMPLES = int(os.environ.get("MMMO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Scalars a YAML or JSON file can hold, NaN and the infinities included, and text with line breaks in it.
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=12) | st.sampled_from(["", "\n", "a\nb", "-1", "1e400", "nan", "null"])
)
# Any JSON-like value: nested lists and mappings of SCALARS.
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# A message that opens with a field's location: `merge.method: `, `models.0.path: `, `optimizer.':': `.
FIELD = re.compile(r"""^(?:[\w-]+|'[^']*'|"[^"]*")(?:\.(?:[\w-]+|'[^']*'|"[^"]*"))*: """)


def assert_one_line(err: BaseException, *, names: str | Path | None = None) -> str:
    """`err` is an MmmoError whose message is one line and names `names` (a file) or a field (`a.b.0.c: ...`)."""
    assert isinstance(err, MmmoError), f"{type(err).__name__} escaped: {err}"
    message = str(err)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    if names is not None:
        assert str(names) in message or FIELD.match(message), message
    return message


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`, by relative path: its mode and bytes (to prove nothing was written)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def paths_in(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts and lists (the root excluded), parents before children."""
    out: list[tuple[Any, ...]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(paths_in(value, (*prefix, key)))
    return out


def node_at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data
