"""The seams of the Python API: the caller's spec is never changed, and the pools and observers share their
interfaces (the methods of EvaluatorPool and LoopObserver, with the same parameters)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from mmmo import api
from mmmo.evaluation.pool import EvaluatorPool, LocalPool
from mmmo.evaluation.ray_pool import RayPool
from mmmo.optimizer.loop import LoopObserver, NullObserver
from mmmo.spec.schema import SearchSpec, spec_from_dict


def _spec(tmp_path: Path) -> SearchSpec:
    data = {
        "name": "seams", "base_model": "org/base", "models": ["org/a", "org/b"],
        "objectives": [{"name": "a", "task": "t", "metric": "acc"}, {"name": "sp", "type": "sparsity"}],
        "optimizer": {"initial": 2, "batches": 1, "candidates": 2, "batch_size": 2},
        "evaluation": {"workers": 1, "device": "auto"},
        "output": {"dir": str(tmp_path / "run"), "export": "none"},
    }
    return spec_from_dict(data, tmp_path, check_paths=False)


class _Stop(Exception):
    """Raised where the search would start loading models."""


def test_search_leaves_the_callers_spec_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    before = spec.model_dump()
    seen: list[SearchSpec] = []

    def make_pool(run_spec: SearchSpec, **_: object) -> None:
        seen.append(run_spec)
        raise _Stop

    monkeypatch.setattr(api, "make_pool", make_pool)
    with pytest.raises(_Stop):
        api.search(spec, workers=3, device="cpu", show_progress=False)
    (run_spec,) = seen
    assert (run_spec.evaluation.workers, run_spec.evaluation.device) == (3, "cpu")  # the overrides apply to the run
    assert spec.model_dump() == before and run_spec is not spec
    assert run_spec.evaluation is not spec.evaluation  # a deep copy: nothing of the run's spec is shared


def _methods(cls: type) -> dict[str, list[str]]:
    """Public methods by name, with their parameter names."""
    return {
        name: list(inspect.signature(fn).parameters)
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


@pytest.mark.parametrize(("protocol", "implementation"), [
    (EvaluatorPool, LocalPool), (EvaluatorPool, RayPool), (LoopObserver, NullObserver), (LoopObserver, api.SearchRecorder),
])  # fmt: skip
def test_implementations_have_every_method_of_their_protocol(protocol: type, implementation: type) -> None:
    wanted, have = _methods(protocol), _methods(implementation)
    assert {name: have.get(name) for name in wanted} == wanted
