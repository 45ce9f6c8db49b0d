"""The spec schema: good specs load with resolved paths; each bad spec fails with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmmo.runtime.errors import SpecError
from mmmo.spec.schema import load_spec


def _write_models(root: Path) -> None:
    for d in ("base", "experts/a", "experts/b"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tasks").mkdir(exist_ok=True)


def _good() -> dict:
    return {
        "name": "t",
        "base_model": "./base",
        "models": ["./experts/a", {"path": "./experts/b", "name": "bee"}],
        "merge": {"method": "dare_ties", "granularity": "layers:2"},
        "search_space": {"weight": [0.0, 1.0], "density": [0.2, 0.9]},
        "objectives": [
            {"name": "a", "task": "demo_a", "metric": "exact_match", "limit": 10},
            {"name": "sparsity", "type": "sparsity"},
        ],
        "tasks_dir": "tasks",
        "optimizer": {"initial": 4, "batches": 2, "candidates": 6, "batch_size": 3},
    }


def _load(tmp_path: Path, data: object) -> object:
    _write_models(tmp_path)
    p = tmp_path / "spec.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return load_spec(p)


def test_good_spec_resolves_paths_and_names(tmp_path: Path) -> None:
    spec = _load(tmp_path, _good())
    assert spec.base_model == str((tmp_path / "base").resolve())
    assert spec.model_names == ["a", "bee"]
    assert spec.models[1].path == str((tmp_path / "experts/b").resolve())
    assert spec.tasks_dir == str((tmp_path / "tasks").resolve())
    assert spec.output.dir == str((tmp_path / "runs/t").resolve())
    assert spec.merge.layer_groups == 2
    assert spec.density_bounds == (0.2, 0.9)
    assert spec.optimizer.budget == 4 + 2 * 3
    assert [o.name for o in spec.task_objectives] == ["a"]
    assert spec.merge.fused is None  # the Merger decides by model size and device


def test_density_defaults_for_density_methods(tmp_path: Path) -> None:
    data = _good()
    del data["search_space"]["density"]
    assert _load(tmp_path, data).density_bounds == (0.1, 1.0)
    data["merge"]["method"] = "task_arithmetic"
    assert _load(tmp_path, data).density_bounds is None


def _bad(**patch: object) -> dict:
    data = _good()
    for dotted, value in patch.items():
        keys = dotted.split("__")
        node = data
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_bad(colour="red"), "colour: unknown key"),
        (_bad(optimizer__initial="ten"), "optimizer.initial: "),
        (_bad(models=[]), "models: needs at least one fine-tuned model"),
        (
            _bad(objectives=[{"name": "a", "task": "x", "metric": "acc"}, {"name": "a", "task": "y", "metric": "acc"}]),
            "objectives: duplicate objective name(s): a",
        ),
        (_bad(search_space__weight=[0.0, 1.5]), "search_space.weight: bounds [0.0, 1.5] must lie within [0, 1]"),
        (_bad(search_space__weight=[0.8, 0.2]), "search_space.weight: bounds [0.8, 0.2] are reversed"),
        (_bad(merge__method="task_arithmetic"), "search_space.density: method 'task_arithmetic' has no density"),
        (_bad(base_model="./nowhere"), "base_model: path does not exist"),
        (_bad(models=["./experts/a", "./experts/missing"]), "models.1.path: path does not exist"),
        (_bad(objectives=[{"name": "s", "type": "sparsity"}]), "objectives: needs at least one lm_eval task objective"),
        (_bad(merge__method="nearswap"), "merge.method: got 'nearswap'"),
        (_bad(merge__granularity="layers:0"), "merge.granularity: must be 'model' or 'layers:K'"),
        (_bad(merge__fused="sometimes"), "merge.fused: "),
        (
            _bad(optimizer__batch_size=20, optimizer__weak_to_strong={"enabled": True, "mode": "crossover"}),
            "optimizer: batch_size (20) cannot exceed candidates (6) with weak_to_strong.mode crossover",
        ),
        (_bad(optimizer__weak_to_strong={"mode": "blend"}), "optimizer.weak_to_strong.mode: "),
        (_bad(name=_DELETE), "name: required field is missing"),
        (_bad(tasks_dir="no_such_dir"), "tasks_dir: folder does not exist"),
        (_bad(objectives=[{"name": "a", "task": "x"}]), "objectives.0: objective 'a' needs 'metric'"),
    ],
)
def test_bad_specs_fail_with_one_line_naming_the_field(tmp_path: Path, data: dict, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        _load(tmp_path, data)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"malformed YAML at line 3, column 1: found character '\\t'"):
        _load(tmp_path, "name: t\nobjectives:\n\t- x\n")


def test_non_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="YAML mapping"):
        _load(tmp_path, "- just\n- a list\n")
    with pytest.raises(SpecError, match="config file not found"):
        load_spec(tmp_path / "absent.yaml")


def test_hub_ids_pass_through(tmp_path: Path) -> None:
    data = _good()
    data["models"] = ["org/fine-tuned-a", "./experts/b"]
    spec = _load(tmp_path, data)
    assert spec.models[0].path == "org/fine-tuned-a"
    assert spec.models[0].name == "fine-tuned-a"
