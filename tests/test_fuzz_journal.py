"""Hostile journals, found by a fuzzer: random JSON, bytes, truncated lines, wrong types in known event kinds and
unknown kinds in trials.jsonl. Loading the run folder (spec, journal, summary) works or raises one line naming the
journal's line, never a traceback, and writes nothing; `repair_journal` then moves exactly the unreadable lines
aside, after which the run loads.

Settings (seed, examples) in fuzzing.py; each minimal failing example the fuzzer found is kept as a plain test.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzzing import FUZZ, VALUES, assert_one_line, node_at, paths_in, tree
from hypothesis import given
from hypothesis import strategies as st

from mmmo.results.summary import load_run
from mmmo.run.records import SourceScore, Trial
from mmmo.run.store import JOURNAL, SPEC_FILE, RunStore, TornJournalWarning, repair_journal
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import spec_from_dict, spec_to_dict

SPEC = {
    "name": "fuzz", "base_model": "org/base", "models": ["org/m1", "org/m2"], "merge": {"method": "ties"},
    "objectives": [{"name": "a", "task": "arith", "metric": "exact_match", "limit": 4},
                   {"name": "sparsity", "type": "sparsity"}],
    "evaluation": {"stages": [0.5, 1.0]},
}
X = [0.1, 0.2, 0.3, 0.4]
OUTCOMES = {"a": {"arith": "0110"}}
# One event of every kind, as the writer journals them, in an order a run could write them.
EVENTS: list[dict[str, Any]] = [
    {"event": "documents", "documents": {"a": [{"task": "arith", "ids": [3, 1, 0, 2], "available": 10,
                                                "fingerprint": "0123456789abcdef"}]}},
    {"event": "source", "source": SourceScore(
        name="base", objectives={"a": 0.5, "sparsity": 0.0}, metrics={"arith": {"exact_match": 0.5}},
        stderr={"a": 0.25}, n_examples={"a": 4}, outcomes=OUTCOMES).to_json()},
    {"event": "proposed", "trial": Trial(0, 0, X, "sobol", params={"m1_weight": 0.5}).to_json()},
    {"event": "proposed", "trial": Trial(1, 0, X, "sobol").to_json()},
    {"event": "attempt_failed", "trial": Trial(1, 0, X, "sobol", attempts=1, error="worker died").to_json()},
    {"event": "partial", "trial": Trial(1, 0, X, "sobol", "partial", objectives={"a": 0.5, "sparsity": -0.01},
                                        outcomes={"a": {"arith": "01"}}, stages_scored=1, attempts=1).to_json()},
    {"event": "done", "trial": Trial(0, 0, X, "sobol", "done", objectives={"a": 0.75, "sparsity": -0.02},
                                     stderr={"a": 0.2, "sparsity": 0.0}, n_examples={"a": 4}, outcomes=OUTCOMES,
                                     stages_scored=2, merge_seconds=0.1, eval_seconds=1.5).to_json()},
    {"event": "failed", "trial": Trial(2, 0, X, "sobol", "failed", error="MmmoError: out of memory").to_json()},
    {"event": "ref_point", "ref_point": [0.0, -1.0]},
    {"event": "batch_end", "batch": 0, "hypervolume": 0.1, "propose_seconds": 0.5},
]


def line(event: dict[str, Any]) -> bytes:
    return json.dumps({**event, "time": 1700000000.0}, separators=(",", ":"), allow_nan=False).encode()


VALID_LINES = [line(e) for e in EVENTS]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding the spec; each example writes its own journal into it."""
    folder = tmp_path_factory.mktemp("fuzz-journal")
    spec = spec_from_dict(SPEC, folder, check_paths=False)
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    return folder


def test_the_valid_journal_loads(run_dir: Path) -> None:
    (run_dir / JOURNAL).write_bytes(b"".join(ln + b"\n" for ln in VALID_LINES))
    _, state, summary = load_run(run_dir)
    assert [(t.id, t.status, t.attempts) for t in state.trials] == [(0, "done", 0), (1, "partial", 1),
                                                                    (2, "failed", 0)]
    assert [t.id for t in summary.pareto] == [0] and state.ref_point == [0.0, -1.0]
    assert state.hypervolumes == {0: 0.1} and state.sources[0].objectives == {"a": 0.5, "sparsity": 0.0}


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with a field removed, replaced by a random value or given a wrong type, or an unknown kind."""
    event = copy.deepcopy(draw(st.sampled_from(EVENTS)))
    path = draw(st.sampled_from(paths_in(event)))
    parent, key = node_at(event, path[:-1]), path[-1]
    op = draw(st.sampled_from(["remove", "random", "wrong_type"]))
    if op == "remove":
        del parent[key]
    elif op == "random":
        parent[key] = draw(VALUES)
    else:
        value = parent[key]
        parent[key] = draw(st.sampled_from([str(value), [value], {"v": value}, -1, 2**64, 1.5, True, None, ""]))
    return json.dumps(event, allow_nan=True).encode()


def damaged_lines() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(VALID_LINES),
        mutated_events(),
        VALUES.map(lambda v: json.dumps(v).encode()),  # random JSON, NaN and Infinity tokens included
        st.binary(max_size=40).filter(lambda b: b"\n" not in b),
        st.tuples(st.sampled_from(VALID_LINES), st.integers(0, 400)).map(lambda p: p[0][: p[1]]),  # truncated
        st.sampled_from([b"", b"   ", b"\r"]),
    )


def _load_or_refuse(run_dir: Path) -> bool:
    """load_run works (True) or raises one line naming the journal (False); the folder is left as it was."""
    before = tree(run_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornJournalWarning)
            load_run(run_dir)
        loaded = True
    except Exception as err:  # noqa: BLE001 - which exception escapes is what is under test
        message = assert_one_line(err, names=run_dir / JOURNAL)
        assert f"{run_dir / JOURNAL}: line " in message, message
        loaded = False
    assert tree(run_dir) == before
    return loaded


@FUZZ
@given(lines=st.lists(damaged_lines(), min_size=1, max_size=8), torn=st.binary(max_size=30))
def test_a_damaged_journal_loads_or_is_refused_naming_the_line(lines: list[bytes], torn: bytes, run_dir: Path) -> None:
    (run_dir / JOURNAL).write_bytes(b"".join(ln + b"\n" for ln in lines) + torn.replace(b"\n", b""))
    for leftover in run_dir.glob("trials.damaged-*"):
        leftover.unlink()
    if _load_or_refuse(run_dir):
        return
    # repair keeps every readable line, moves the rest aside as they were, and then the run loads
    report = repair_journal(run_dir / JOURNAL)
    assert report.moved >= 1 and report.side_file is not None
    kept = (run_dir / JOURNAL).read_bytes().split(b"\n")[:-1]
    moved = report.side_file.read_bytes().split(b"\n")[:-1]
    assert len(kept) == report.kept and len(moved) == report.moved
    assert sorted(moved + kept) == sorted(ln for ln in [*lines, torn.replace(b"\n", b"")] if ln.strip())
    assert _load_or_refuse(run_dir)
    report.side_file.unlink()


def _event(kind: str, **changes: Any) -> bytes:
    """The valid event of `kind` (its trial, source or own fields) with `changes` applied."""
    event = copy.deepcopy(next(e for e in EVENTS if e["event"] == kind))
    target = event.get("trial", event.get("source", event))
    target.update(changes)
    return json.dumps(event).encode()


# Found by the fuzzer (before payloads were typed, these escaped as AttributeError and TypeError from the summary),
# and their neighbours: the line is named with what is wrong in it.
DAMAGED = {
    "documents-null": (b'{"event": "documents", "documents": null}', "bad documents: Input should be an object"),
    "objectives-a-string": (_event("done", objectives="{'a': 0.75}"), "bad trial.objectives: Input should be"),
    "id-a-string": (_event("proposed", id="0"), "bad trial.id: Input should be a valid integer"),
    "id-a-bool": (_event("failed", id=True), "bad trial.id: Input should be a valid integer"),
    "x-null": (_event("partial", x=None), "bad trial.x: Input should be a valid array"),
    "nan-score": (_event("done", objectives={"a": float("nan"), "sparsity": 0.0}), "non-finite number in 'trial'"),
    "score-missing": (_event("done", objectives={"sparsity": 0.0}), "without a score for objective 'a'"),
    "source-score-missing": (_event("source", objectives={"a": 0.5}), "without a score for objective 'sparsity'"),
    "no-trial": (b'{"event": "failed"}', "is a 'failed' event without 'trial'"),
    "batch-a-float": (_event("batch_end", batch=0.5), "bad batch: Input should be a valid integer"),
    "ids-a-dict": (b'{"event": "documents", "documents": {"a": [{"task": "t", "ids": {}, "available": 1, '
                   b'"fingerprint": "f"}]}}', "bad documents.a.0.ids: Input should be a valid array"),
    "odd-key": (_event("done", objectives={"a\nb": 1.0}), "without a score for objective 'a'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_line_is_refused_naming_it_and_repair_moves_it(case: str, run_dir: Path) -> None:
    damaged, said = DAMAGED[case]
    (run_dir / JOURNAL).write_bytes(b"".join(ln + b"\n" for ln in [*VALID_LINES[:2], damaged, *VALID_LINES[2:]]))
    with pytest.raises(MmmoError) as err:
        load_run(run_dir)
    assert f"{run_dir / JOURNAL}: line 3 is a" in assert_one_line(err.value) and said in str(err.value)
    report = repair_journal(run_dir / JOURNAL)
    assert (report.moved, report.kept) == (1, len(VALID_LINES)) and report.side_file is not None
    assert report.side_file.read_bytes() == damaged + b"\n"
    report.side_file.unlink()
    assert load_run(run_dir)[1].ref_point == [0.0, -1.0]


def test_a_damaged_stored_spec_is_refused_naming_it(run_dir: Path, tmp_path: Path) -> None:
    """`optimizer: 5` escaped as AttributeError while fields added later were filled in."""
    shutil.copy(run_dir / JOURNAL, tmp_path / JOURNAL)
    for text, said in (("[1, 2]", "not a spec"), ("a: [", "malformed YAML"), ("optimizer: 5", "name: required field is missing")):
        (tmp_path / SPEC_FILE).write_text(text)
        with pytest.raises(MmmoError) as err:
            load_run(tmp_path)
        assert assert_one_line(err.value).startswith(f"{tmp_path / SPEC_FILE}: ") and said in str(err.value)


def test_a_run_folder_without_its_journal_or_spec_is_refused_in_one_line(run_dir: Path, tmp_path: Path) -> None:
    shutil.copy(run_dir / SPEC_FILE, tmp_path / SPEC_FILE)
    with pytest.raises(MmmoError, match=r"no trials\.jsonl; nothing has run yet$"):
        RunStore(tmp_path).read_run()
    (tmp_path / SPEC_FILE).unlink()
    with pytest.raises(MmmoError, match=r"is not an mmmo run folder \(no spec\.yaml\)$"):
        RunStore(tmp_path).read_run()
