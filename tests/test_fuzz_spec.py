"""Hostile spec YAML, found by a fuzzer: random files, random structures and mutations of a valid spec either load
or are refused with one line naming the field or the file; `mmmo validate --offline` says the same on stderr.

Settings (seed, examples) in fuzzing.py; each minimal failing example the fuzzer found is kept as an @example.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzzing import FUZZ, FUZZ_EXAMPLES, SCALARS, VALUES, assert_one_line, node_at, paths_in
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mmmo.cli import app
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import SearchSpec, load_spec

VALID: dict[str, Any] = {
    "name": "fuzz",
    "base_model": "base",
    "models": ["m1", {"path": "m2", "name": "two"}],
    "merge": {"method": ["ties", "dare_ties"], "granularity": "layers:2", "dtype": "bfloat16", "lambda": 0.9},
    "search_space": {"weight": [0.0, 1.0], "density": [0.1, 0.9]},
    "objectives": [
        {"name": "a", "task": "arith", "metric": "exact_match", "limit": 10},
        {"name": "b", "task": "sort", "metric": "exact_match", "limit": 0.5, "num_fewshot": 0},
        {"name": "sparsity", "type": "sparsity"},
    ],
    "optimizer": {"initial": 4, "batches": 1, "batch_size": 2, "ref_point": [0.0, 0.0, -1.0],
                  "weak_to_strong": {"enabled": True, "mode": "pool"}},
    "evaluation": {"device": "cpu", "batch_size": 8, "stages": [0.5, 1.0], "subset": "random"},
    "output": {"dir": "out", "export": "pareto", "export_limit": 2},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the model folders VALID names, so paths resolve."""
    root = tmp_path_factory.mktemp("fuzz-spec")
    for name in ("base", "m1", "m2"):
        (root / name).mkdir()
    return root


def test_the_valid_spec_loads(folder: Path) -> None:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(VALID))
    spec = load_spec(path)
    assert spec.model_names == ["m1", "two"] and spec.base_model == str(folder / "base")
    assert spec.merge.methods == ("ties", "dare_ties") and spec.optimizer.budget == 6


def wrong_types(value: Any) -> st.SearchStrategy[Any]:
    """Values of a plausible but wrong type or size, made from the value a valid spec had there."""
    return st.sampled_from([str(value), [value], {"value": value}, -1, 0, 2**63, 1e308, -0.5, True, None, ""])


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    """VALID with one to three of: a field removed, replaced by a random value or a wrong type, an unknown key."""
    data: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_in(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = node_at(data, path[:-1]), path[-1]
        op = draw(st.sampled_from(["remove", "random", "wrong_type", "unknown_key"]))
        if op == "remove":
            del parent[key]
        elif op == "random":
            parent[key] = draw(VALUES)
        elif op == "wrong_type":
            parent[key] = draw(wrong_types(parent[key]))
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(SCALARS)
    return data


def _load_or_refuse(path: Path) -> None:
    """Both loads (fields only, and with paths resolved) work or raise a one-line error naming field or file."""
    for check_paths in (False, True):
        try:
            assert isinstance(load_spec(path, check_paths=check_paths), SearchSpec)
        except Exception as err:  # noqa: BLE001 - which exception escapes is what is under test
            assert_one_line(err, names=path)


def _write(folder: Path, text: str | bytes) -> Path:
    path = folder / "spec.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _with(dotted: str, value: Any) -> dict[str, Any]:
    """VALID with one field (a dotted path; list indices as numbers) set to `value`."""
    data = copy.deepcopy(VALID)
    *parents, leaf = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    node_at(data, tuple(parents))[leaf] = value
    return data


# Found by the fuzzer: an odd key made a message that named no field (`:: unknown key`), and an empty name put the
# run in runs/ itself. Found beside them: a key with a line break, a name with a separator, `~nobody` and a NUL in
# a path (RuntimeError and ValueError escaped).
@example(spec=_with("optimizer.:", None))
@example(spec=_with("merge.a\nb", 1))
@example(spec=_with("name", ""))
@example(spec=_with("name", "../elsewhere"))
@example(spec=_with("objectives.0.name", "a\nb"))
@example(spec=_with("base_model", "~nosuchuser/base"))
@example(spec=_with("output.dir", "out\x00"))
@example(spec=_with("tasks_dir", "~nosuchuser"))
@FUZZ
@given(spec=mutated_specs())
def test_a_mutated_spec_loads_or_is_refused_in_one_line(spec: Any, folder: Path) -> None:
    _load_or_refuse(_write(folder, yaml.safe_dump(spec, allow_unicode=True)))


@example(data=None)  # found by the fuzzer: refused without naming the file
@example(data=[VALID])
@FUZZ
@given(data=VALUES | st.dictionaries(st.sampled_from(sorted(VALID)), VALUES, max_size=6))
def test_a_random_structure_loads_or_is_refused_in_one_line(data: Any, folder: Path) -> None:
    _load_or_refuse(_write(folder, yaml.safe_dump(data, allow_unicode=True)))


# Found by the fuzzer: bytes that are not UTF-8 escaped as UnicodeDecodeError; an empty file or a scalar was
# refused without naming the file; deep nesting overflowed the YAML parser's recursion.
@example(text=b"\x80", cut=0)
@example(text="", cut=0)
@example(text="[" * 1000, cut=0)
@example(text="a:\n" + "".join(" " * i + "a:\n" for i in range(1, 2000)), cut=0)
@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200), cut=st.integers(0, 2000))
def test_random_or_truncated_yaml_loads_or_is_refused_in_one_line(text: str | bytes, cut: int, folder: Path) -> None:
    _load_or_refuse(_write(folder, text))
    _load_or_refuse(_write(folder, yaml.safe_dump(VALID)[:cut]))


@settings(FUZZ, max_examples=max(10, FUZZ_EXAMPLES // 5))
@given(spec=mutated_specs())
def test_validate_offline_says_one_line(spec: Any, folder: Path) -> None:
    """`mmmo validate --offline`: one line on stdout and exit 0, or one `error:` line on stderr and exit 2 with the
    message load_spec gives."""
    path = _write(folder, yaml.safe_dump(spec, allow_unicode=True))
    result = CliRunner().invoke(app, ["validate", str(path), "--offline"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 0:
        assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith("spec: "), result.stdout
        return
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    with pytest.raises(MmmoError) as err:
        from mmmo.spec.validate import check_fields

        check_fields(path)
    assert lines[0] == f"error: {err.value}"


def test_the_fuzz_folder_holds_only_what_the_tests_wrote(folder: Path) -> None:
    """Loading a spec writes nothing next to it (no output folder is created)."""
    _load_or_refuse(_write(folder, yaml.safe_dump(VALID)))
    assert sorted(p.name for p in folder.iterdir()) == ["base", "m1", "m2", "spec.yaml"]
    shutil.rmtree(folder / "base")
    with pytest.raises(MmmoError, match=r"^base_model: path does not exist: .*base$"):
        load_spec(folder / "spec.yaml")
    (folder / "base").mkdir()


@pytest.mark.parametrize(("dotted", "value"), [
    ("merge.lambda", float("nan")), ("optimizer.ref_point.2", float("-inf")), ("objectives.1.limit", float("inf")),
])
def test_nan_and_the_infinities_are_refused_naming_the_field(dotted: str, value: float, folder: Path) -> None:
    """YAML's .nan and .inf loaded as a lambda or a reference point, to show up later only as NaN scores."""
    path = _write(folder, yaml.safe_dump(_with(dotted, value)))
    with pytest.raises(MmmoError, match=rf"^{re.escape(dotted)}(\.int)?: Input should be a finite number"):
        load_spec(path, check_paths=False)
