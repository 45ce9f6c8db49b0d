"""lm-eval tasks marked `unsafe_code` (mbpp, humaneval: they execute the model's code) run only when the spec
confirms it with evaluation.confirm_run_unsafe_code; otherwise they are refused in one line before scoring.

The unsafe task here is the fixtures' letter -> digit generation task with `unsafe_code: true` added: lm-eval
treats it exactly like a code task, without any code being run.
"""

from __future__ import annotations

import os
from typing import Any

import objective_fixtures as fx
import pytest
import torch
import yaml

from mmmo.objectives import LmEvalObjectives
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import EvaluationSpec, ObjectiveSpec

UNSAFE_TASK = "mmmo_test_unsafe"
UNSAFE_GROUP = "mmmo_test_unsafe_group"  # a group hides its members' unsafe_code from the task index
REFUSED = (
    r"executes the code the model writes \(unsafe_code\); "
    r"allow it with evaluation\.confirm_run_unsafe_code: true"
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    tasks = fx.write_tasks(tmp_path_factory.mktemp("unsafe"))
    cfg = yaml.safe_load((tasks / f"{fx.GEN_TASK}.yaml").read_text())
    cfg.update(task=UNSAFE_TASK, unsafe_code=True)
    (tasks / f"{UNSAFE_TASK}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    group = {
        "group": UNSAFE_GROUP,
        "task": [UNSAFE_TASK, fx.GEN4_TASK],
        "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean", "weight_by_size": True}],
    }
    (tasks / f"{UNSAFE_GROUP}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return str(tasks)


def _objectives(task: str, tasks_dir: str, *, confirm: bool) -> LmEvalObjectives:
    spec = ObjectiveSpec(name="code", task=task, metric="exact_match")
    return LmEvalObjectives([spec], tasks_dir=tasks_dir, batch_size=4, confirm_run_unsafe_code=confirm)


def test_the_spec_does_not_confirm_by_default() -> None:
    assert EvaluationSpec().confirm_run_unsafe_code is False


@pytest.mark.parametrize("task", [UNSAFE_TASK, UNSAFE_GROUP])
def test_an_unsafe_task_is_refused_without_consent(task: str, tasks_dir: str) -> None:
    with pytest.raises(MmmoError, match=rf"^objective 'code': lm-eval task '{UNSAFE_TASK}' {REFUSED}"):
        _objectives(task, tasks_dir, confirm=False)


def test_a_confirmed_unsafe_task_is_scored(tasks_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "0")  # restored after the test
    objectives = _objectives(UNSAFE_TASK, tasks_dir, confirm=True)
    # The consent reaches Hugging Face evaluate's code_eval too, which checks this variable itself.
    assert os.environ["HF_ALLOW_CODE_EVAL"] == "1"
    tokenizer = fx.make_tokenizer()
    model: Any = fx.make_model(tokenizer)
    fx.set_bigram(model, tokenizer, fx.RIGHT)
    objectives.bind(model, tokenizer, torch.device("cpu"))
    # lm-eval itself refuses an unsafe task unless evaluate() is told it was confirmed.
    assert objectives.evaluate()["code"].value == 1.0


def test_safe_tasks_need_no_consent(tasks_dir: str) -> None:
    assert _objectives(fx.GEN_TASK, tasks_dir, confirm=False).names == ["code"]
