"""The specs shipped under configs/: each loads with the schema offline, `mmmo validate --offline` accepts it in
one line, a broken copy is refused in one line, and the lm-eval tasks and metrics they name exist.

New YAMLs under configs/ are covered automatically (the tests glob the folder).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mmmo.cli import app
from mmmo.spec.schema import SearchSpec, load_spec

REPO = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO / "configs"
CONFIGS = sorted(CONFIGS_DIR.rglob("*.yaml"))
EXAMPLES = sorted((CONFIGS_DIR / "examples").glob("*.yaml"))


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS_DIR))


def _validate(path: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["validate", str(path), *extra])


def test_the_glob_finds_the_demo_and_the_examples() -> None:
    assert CONFIGS_DIR / "demo.yaml" in CONFIGS
    assert len(EXAMPLES) >= 2
    assert any(load_spec(p, check_paths=False).merge.granularity.startswith("layers:") for p in EXAMPLES)


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_loads_with_the_schema_offline(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    spec = load_spec(path, check_paths=False)
    assert spec.task_objectives
    # Offline means as written: nothing resolved against the disk or the hub.
    assert spec.base_model == raw["base_model"]
    assert spec.output.dir == raw.get("output", {}).get("dir", "")


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_validate_offline_prints_one_line(path: Path) -> None:
    result = _validate(path, "--offline")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    name = load_spec(path, check_paths=False).name
    assert lines[0].startswith(f"spec: {name}: ")
    assert "fields ok; not checked (offline): model paths and hub ids" in lines[0]
    assert "lm-eval tasks and metrics" in lines[0]


def _set(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def patch(data: dict[str, Any]) -> None:
        *parents, key = dotted.split(".")
        node: Any = data
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[key] = value

    return patch


# Each: how to break a copy of an example, and the one-line error (after "error: ") that must name the problem.
BROKEN = {
    "unknown-method": (
        _set("merge.method", "nearswap"),
        r"merge\.method: got 'nearswap': input should be 'linear'",
    ),
    "weight-above-1": (
        _set("search_space.weight", [0.0, 1.5]),
        r"search_space\.weight: bounds \[0\.0, 1\.5\] must lie within \[0, 1\]",
    ),
    "unknown-key": (_set("merge.desnity", 0.5), r"merge\.desnity: unknown key"),
    "zero-layer-groups": (
        _set("merge.granularity", "layers:0"),
        r"merge\.granularity: must be 'model' or 'layers:K' with K >= 1",
    ),
    # Checked offline although lm-eval reads it: the limit needs no task to be judged.
    "limit-zero": (_set("objectives.0.limit", 0), r"objective '\w+': limit must be a count >= 1"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_validate_offline_refuses_a_broken_copy_in_one_line(case: str, tmp_path: Path) -> None:
    patch, message = BROKEN[case]
    data = yaml.safe_load(EXAMPLES[0].read_text())
    patch(data)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    result = _validate(broken, "--offline")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]


def test_offline_leaves_paths_alone_but_the_full_check_does_not(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLES[0].read_text())
    data["base_model"] = "./no-such-folder"
    spec = tmp_path / "local.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _validate(spec, "--fields-only").exit_code == 0
    full = _validate(spec)
    assert full.exit_code == 2
    assert full.stderr.strip() == f"error: base_model: path does not exist: {tmp_path / 'no-such-folder'}"


# ------------------------------------------------------------------ task names against lm-eval's own index


@pytest.fixture(scope="module")
def builtin_tasks() -> Any:
    """lm-eval's index of its built-in tasks: reads every task YAML (~10 s on 2 busy cores), builds nothing."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _reported_keys(cfg: dict[str, Any]) -> set[str]:
    """The "metric,filter" keys a task reports, from its indexed YAML (a metric given as a function is named
    after it: `!function utils.pass_at_1` is indexed as ".../utils.pass_at_1" and reported as pass_at_1)."""
    metrics = [str(m["metric"]).rsplit(".", 1)[-1] for m in cfg.get("metric_list") or []]
    filters = [f["name"] for f in cfg.get("filter_list") or []] or ["none"]
    return {f"{m},{f}" for m in metrics for f in filters}


def _indexes(spec: SearchSpec, path: Path, builtin: Any) -> list[Any]:
    if spec.tasks_dir is None:
        return [builtin]
    from lm_eval.tasks import TaskManager

    tasks_dir = (path.parent / spec.tasks_dir).resolve()
    if not tasks_dir.is_dir():
        pytest.skip(f"tasks_dir {tasks_dir} is built by `mmmo demo` and is not there")
    return [TaskManager(include_path=str(tasks_dir), include_defaults=False), builtin]


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_tasks_and_metrics_exist_in_lm_eval(path: Path, builtin_tasks: Any) -> None:
    spec = load_spec(path, check_paths=False)
    indexes = _indexes(spec, path, builtin_tasks)
    for objective in spec.task_objectives:
        entry = next((i.task_index[objective.task] for i in indexes if objective.task in i.task_index), None)
        assert entry is not None, f"{objective.name}: lm-eval has no task {objective.task!r}"
        assert entry.cfg and entry.cfg.get("metric_list"), f"{objective.task}: no metric_list to check against"
        keys = _reported_keys(entry.cfg)
        metric = objective.metric or ""
        # Without a filter, mmmo reads the first filter that reports the metric.
        found = metric in keys if "," in metric else any(k.startswith(f"{metric},") for k in keys)
        assert found, f"{objective.name}: {objective.task} reports {sorted(keys)}, not {metric!r}"
        if entry.cfg.get("unsafe_code"):
            assert spec.evaluation.confirm_run_unsafe_code, f"{objective.task} runs code: the spec must confirm it"
