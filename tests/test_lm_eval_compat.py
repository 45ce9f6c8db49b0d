"""Each adaptation in mmmo.objectives.lm_eval_compat, pinned: what it assumes of lm-eval still holds, and the
adaptation still has its effect, on the fixtures' tiny bigram model and local tasks.

A failure here names the lm-eval internal that moved; the adaptation's docstring says what it was for.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
from pathlib import Path
from typing import Any

import objective_fixtures as fx
import pytest
import torch
import yaml

from mmmo.objectives.lm_eval_compat import (
    BOOTSTRAP_IN_PROCESS_VARIABLE,
    aggregate_outcomes,
    bootstrap_in_process,
    cache_prompt_templates,
    declares_unsafe_code,
    filter_names,
    freeze_requests,
    live_hflm,
)

FILTERED_TASK = "mmmo_test_filtered"  # the generation task with a named filter pipeline
UNSAFE_TASK = "mmmo_test_unsafe"  # the generation task marked unsafe_code
UNSAFE_GROUP = "mmmo_test_unsafe_group"
ROLLING_TASK = "mmmo_test_rolling"  # loglikelihood_rolling over "<letter><digit>"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tasks = fx.write_tasks(tmp_path_factory.mktemp("compat"))
    gen = yaml.safe_load((tasks / f"{fx.GEN_TASK}.yaml").read_text())
    extra: dict[str, dict[str, Any]] = {
        FILTERED_TASK: {
            **gen,
            "task": FILTERED_TASK,
            "filter_list": [
                {"name": "first-digit", "filter": [{"function": "regex", "regex_pattern": "(\\d)"},
                                                   {"function": "take_first"}]}
            ],
        },
        UNSAFE_TASK: {**gen, "task": UNSAFE_TASK, "unsafe_code": True},
        UNSAFE_GROUP: {
            "group": UNSAFE_GROUP,
            "task": [UNSAFE_TASK, fx.GEN4_TASK],
            "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean"}],
        },
        ROLLING_TASK: {
            "task": ROLLING_TASK,
            **{k: gen[k] for k in ("dataset_path", "dataset_kwargs", "test_split")},
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{prompt}}{{answer}}",
            "metric_list": [{"metric": "word_perplexity"}],
        },
    }
    for name, cfg in extra.items():
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tasks


@pytest.fixture(scope="module")
def manager(tasks_dir: Path) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=False)


@pytest.fixture()
def load(manager: Any) -> Any:
    """`load(name)`: a freshly built lm-eval Task (its dataset loaded, no requests built)."""

    def task(name: str) -> Any:
        return manager.load([name])["tasks"][name]

    return task


@pytest.fixture(scope="module")
def live() -> tuple[Any, Any]:
    tokenizer = fx.make_tokenizer()
    model = fx.make_model(tokenizer)
    fx.set_bigram(model, tokenizer, fx.RIGHT)
    return model, tokenizer


def _requests(task: Any, limit: int | None = None) -> list[Any]:
    """The task's requests, built as lm-eval builds them (unfrozen)."""
    task.build_all_requests(limit=limit, rank=0, world_size=1, cache_requests=False)
    return list(task.instances)


def _evaluate(lm: Any, tasks: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    from lm_eval.evaluator import evaluate

    with torch.no_grad(), bootstrap_in_process():
        return evaluate(lm=lm, task_dict={"tasks": tasks, "groups": {}}, bootstrap_iters=0, **kwargs)


# ------------------------------------------------------------------------------------ freeze_requests


def test_lm_eval_rebuilds_requests_into_the_private_instances_list(load: Any) -> None:
    from lm_eval.api.task import Task

    assert {"limit", "rank", "world_size", "cache_requests"} <= set(_parameters(Task.build_all_requests))
    task = load(fx.GEN_TASK)
    first = _requests(task)
    assert task.instances is task._instances  # what `instances` reads is what freeze_requests restores
    assert [i.args for i in _requests(task)] == [i.args for i in first]
    assert not {id(i) for i in task.instances} & {id(i) for i in first}  # a rebuild: new requests each time


def test_frozen_requests_are_built_once_and_picked_on_each_evaluate(load: Any, live: tuple[Any, Any]) -> None:
    model, tokenizer = live
    task = load(fx.GEN_TASK)
    task.set_config(key="num_fewshot", value=2)  # few-shot sampling: a rebuild would draw other examples
    task.set_fewshot_seed(seed=1234)
    freeze_requests(task, [4, 1, 3, 0])
    built = list(task.instances)
    assert len(built) == 4
    assert [i.doc["prompt"] for i in built] == ["a", "b", "d", "e"]  # lm-eval builds them in split order
    pick = task.build_all_requests
    calls: list[dict[str, Any]] = []

    def counted(**kwargs: Any) -> None:
        calls.append(kwargs)
        pick(**kwargs)

    task.build_all_requests = counted
    lm = live_hflm(pretrained=model, tokenizer=tokenizer, batch_size=4)
    fx.set_bigram(model, tokenizer, {**fx.RIGHT, "d": "1"})  # only d is wrong
    for _ in range(2):
        out = _evaluate(lm, {fx.GEN_TASK: task}, samples={fx.GEN_TASK: [0, 1, 3, 4]}, log_samples=True)
        assert out["results"][fx.GEN_TASK]["exact_match,none"] == 0.75
        by_doc = {s["doc_id"]: s["exact_match"] for s in out["samples"][fx.GEN_TASK]}
        assert by_doc == {0: 1.0, 1: 1.0, 3: 0.0, 4: 1.0}  # lm-eval maps positions back to document ids
    assert len(calls) == 2  # lm-eval asks for the requests on every evaluate() ...
    assert calls[0]["samples"] == [0, 1, 3, 4]
    # ... and gets copies of the built ones: the same prompts, fresh outputs, numbered by position.
    assert [i.arguments for i in task.instances] == [i.arguments for i in built]
    assert all(i.resps == [] for i in built)
    # A stage's subset, sorted: lm-eval maps positions back through the list as given.
    out = _evaluate(lm, {fx.GEN_TASK: task}, samples={fx.GEN_TASK: [1, 3]}, log_samples=True)
    assert {s["doc_id"]: s["exact_match"] for s in out["samples"][fx.GEN_TASK]} == {1: 1.0, 3: 0.0}
    assert [i.doc_id for i in task.instances] == [0, 1]
    assert [i.arguments for i in task.instances] == [built[1].arguments, built[2].arguments]
    fx.set_bigram(model, tokenizer, fx.RIGHT)  # the model is shared by the module's tests


def test_aggregate_outcomes_is_what_lm_eval_reports_for_those_documents(
    manager: Any, live: tuple[Any, Any]
) -> None:
    model, tokenizer = live
    fx.set_bigram(model, tokenizer, {**fx.RIGHT, "d": "1", "e": "1"})
    loaded = manager.load([fx.GROUP])
    tasks, groups = dict(loaded["tasks"]), dict(loaded["groups"])
    lm = live_hflm(pretrained=model, tokenizer=tokenizer, batch_size=4)
    with torch.no_grad(), bootstrap_in_process():
        from lm_eval.evaluator import evaluate

        out = evaluate(lm=lm, task_dict={"tasks": tasks, "groups": groups}, bootstrap_iters=10, log_samples=True)
    per_doc = {
        name: {"exact_match,none": [s["exact_match"] for s in sorted(out["samples"][name], key=lambda s: s["doc_id"])]}
        for name in tasks
    }
    assert per_doc[fx.GEN_TASK]["exact_match,none"] == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    mine = aggregate_outcomes(tasks, groups, per_doc, bootstrap_iters=10)
    for name in [fx.GEN_TASK, fx.GEN4_TASK, fx.GROUP]:
        for key in ("exact_match,none", "exact_match_stderr,none"):
            assert mine[name][key] == pytest.approx(out["results"][name][key], rel=1e-12), (name, key)
    assert mine[fx.GROUP]["exact_match,none"] == pytest.approx(7 / 10)  # 4/6 and 3/4, weighted by size
    fx.set_bigram(model, tokenizer, fx.RIGHT)


# ------------------------------------------------------------------------- metrics and task index


def test_filter_names_are_the_private_filter_pipelines(load: Any, live: tuple[Any, Any]) -> None:
    plain, filtered = load(fx.GEN_TASK), load(FILTERED_TASK)
    assert [f.name for f in plain._filters] == ["none"]
    assert filter_names(plain) == ["none"]
    assert filter_names(filtered) == ["first-digit"]
    # ... and they are the filter half of the keys lm-eval reports.
    lm = live_hflm(pretrained=live[0], tokenizer=live[1], batch_size=4)
    results = _evaluate(lm, {FILTERED_TASK: filtered})["results"][FILTERED_TASK]
    assert results["exact_match,first-digit"] == 1.0


def test_unsafe_code_is_read_from_the_task_index(manager: Any) -> None:
    assert manager.task_index[UNSAFE_TASK].cfg["unsafe_code"] is True
    assert declares_unsafe_code(manager, UNSAFE_TASK)
    assert not declares_unsafe_code(manager, fx.GEN_TASK)
    assert not declares_unsafe_code(manager, "no_such_task")
    # A group's YAML does not say it: its members are checked once loaded (UNSAFE_CODE), as lm-eval sets it.
    assert not declares_unsafe_code(manager, UNSAFE_GROUP)
    assert manager.load([UNSAFE_GROUP])["tasks"][UNSAFE_TASK].UNSAFE_CODE is True


# --------------------------------------------------------------------------- templates and stderrs


def test_prompts_are_rendered_through_the_shared_jinja_environment(
    load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jinja2 import Environment
    from lm_eval import utils

    assert isinstance(utils.env, Environment)
    compiled: list[str] = []
    compile_template = utils.env.from_string

    def spy(source: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(source)
        return compile_template(source, *args, **kwargs)

    monkeypatch.setattr(utils.env, "from_string", spy)
    task = load(fx.GEN_TASK)  # doc_to_text "{{prompt}}"
    assert task.doc_to_text({"prompt": "c", "answer": "3"}) == "c"
    assert "{{prompt}}" in compiled


def test_cached_templates_are_compiled_once_and_render_the_same() -> None:
    from lm_eval import utils

    cache_prompt_templates()
    patched = utils.env.from_string
    cache_prompt_templates()  # applying it again changes nothing
    assert utils.env.from_string is patched
    template = utils.env.from_string("{{prompt}}:{{answer}}")
    assert utils.env.from_string("{{prompt}}:{{answer}}") is template
    assert utils.apply_template("{{prompt}}:{{answer}}", {"prompt": "a", "answer": "1"}) == "a:1"
    # Anything but a plain template string is compiled afresh, as before.
    assert utils.env.from_string("{{x}}", globals={"x": 1}) is not utils.env.from_string("{{x}}", globals={"x": 1})


def test_bootstraps_run_in_a_pool_unless_the_variable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval.api.metrics import bootstrap_stderr, mean

    class NoPool(Exception):
        pass

    def no_pool(*_args: Any, **_kwargs: Any) -> Any:
        raise NoPool

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    monkeypatch.delenv(BOOTSTRAP_IN_PROCESS_VARIABLE, raising=False)
    xs = [0.0, 1.0, 1.0, 0.0, 1.0]
    with pytest.raises(NoPool):
        bootstrap_stderr(mean, xs, iters=10)
    with bootstrap_in_process():
        assert bootstrap_stderr(mean, xs, iters=10) > 0.0
    assert BOOTSTRAP_IN_PROCESS_VARIABLE not in os.environ  # restored
    monkeypatch.setenv(BOOTSTRAP_IN_PROCESS_VARIABLE, "yes")
    with bootstrap_in_process():
        pass
    assert os.environ[BOOTSTRAP_IN_PROCESS_VARIABLE] == "yes"


# -------------------------------------------------------------------------------- the HF wrapper


def test_hflm_methods_the_wrapper_overrides_keep_their_signatures() -> None:
    from lm_eval.models.huggingface import HFLM

    for method in (HFLM.loglikelihood, HFLM.loglikelihood_rolling, HFLM.generate_until):
        assert _parameters(method) == ["self", "requests", "disable_tqdm"], method
    assert _parameters(HFLM._loglikelihood_tokens) == ["self", "requests", "disable_tqdm", "override_bs"]
    assert _parameters(HFLM._detect_batch_size) == ["self", "requests", "pos"]
    assert _parameters(HFLM.tok_encode) == ["self", "string", "add_special_tokens", "left_truncate_len", "kwargs"]
    assert _parameters(HFLM.tok_batch_encode) == ["self", "strings", "padding_side", "left_truncate_len", "truncation"]


def test_the_wrapper_draws_no_progress_bars(
    load: Any, live: tuple[Any, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = live
    requests = {
        "generate_until": _requests(load(fx.GEN_TASK)),
        "loglikelihood": _requests(load(fx.MC_TASK)),
        "loglikelihood_rolling": _requests(load(ROLLING_TASK)),
    }
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    lm = live_hflm(pretrained=model, tokenizer=tokenizer, batch_size=4)
    for kind, reqs in requests.items():
        capfd.readouterr()
        expected = getattr(plain, kind)(reqs)
        assert capfd.readouterr().err, f"HFLM.{kind} no longer draws a bar: the adaptation may be moot"
        assert getattr(lm, kind)(reqs) == expected
        assert capfd.readouterr() == ("", ""), kind


def test_the_auto_batch_size_is_probed_once_per_run_and_request_type(
    load: Any, live: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from lm_eval.models.huggingface import HFLM

    probes = fx.count_batch_size_probes(monkeypatch)
    model, tokenizer = live
    gen, mc = _requests(load(fx.GEN_TASK)), _requests(load(fx.MC_TASK))
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size="auto")
    assert plain.batch_size_per_gpu == "auto"
    plain.generate_until(gen)
    plain.generate_until(gen)
    assert len(probes) == 2  # lm-eval probes on every call
    probes.clear()
    lm = live_hflm(pretrained=model, tokenizer=tokenizer, batch_size="auto")
    expected = lm.generate_until(gen), lm.loglikelihood(mc)
    assert probes == [64, 64]  # one per request type, at lm-eval's max_batch_size
    capfd.readouterr()
    assert (lm.generate_until(gen), lm.loglikelihood(mc)) == expected
    assert probes == [64, 64]
    assert capfd.readouterr() == ("", "")  # lm-eval prints about every probe
    assert lm.batch_size_per_gpu == "auto"
    lm.run_key = 1  # another run's requests: probed afresh
    lm.generate_until(gen)
    assert probes == [64, 64, 64]


def test_tokenizing_is_memoised_and_hands_out_copies(
    load: Any, live: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = live
    used: list[str] = []
    for name in ("tok_encode", "tok_batch_encode"):
        original = getattr(HFLM, name)

        def spy(self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            used.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(HFLM, name, spy)
    lm = live_hflm(pretrained=model, tokenizer=tokenizer, batch_size=4)
    gen, mc = _requests(load(fx.GEN_TASK)), _requests(load(fx.MC_TASK))
    lm.generate_until(gen)
    lm.loglikelihood(mc)
    assert {"tok_encode", "tok_batch_encode"} <= set(used)  # HFLM tokenises through both
    used.clear()
    lm.generate_until(gen)
    lm.loglikelihood(mc)
    assert used == []  # the second time, from the memo

    ids = lm.tok_encode("abc")
    assert ids == HFLM.tok_encode(lm, "abc")
    ids.append(0)
    assert lm.tok_encode("abc") == HFLM.tok_encode(lm, "abc")
    batch, mask = lm.tok_batch_encode(["ab", "abc"])
    expected = HFLM.tok_batch_encode(lm, ["ab", "abc"])
    assert torch.equal(batch, expected[0]) and torch.equal(mask, expected[1])
    batch.zero_()
    assert torch.equal(lm.tok_batch_encode(["ab", "abc"])[0], expected[0])
