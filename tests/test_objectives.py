"""lm-eval objectives on a live model rewritten in place, scored on tasks whose answers are known exactly.

HF_HOME and the offline switches are set by conftest.py before anything imports datasets or lm-eval.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import objective_fixtures as fx
import pytest
import torch

from mmmo.objectives import EvaluationError, LmEvalObjectives, TaskScore, default_dtype, resolve_device
from mmmo.objectives import device as device_mod
from mmmo.objectives import lm_eval as lm_eval_objectives
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import ObjectiveSpec

CPU = torch.device("cpu")
# Three of six letters answered wrong (d, e, f); on the first four letters only d is wrong.
HALF_WRONG = {**fx.RIGHT, "d": "1", "e": "1", "f": "2"}
STDERR_HALF_OF_6 = math.sqrt(0.5 * 0.5 * 6 / 5 / 6)  # sample stderr of the mean of [1,1,1,0,0,0]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(fx.write_tasks(tmp_path_factory.mktemp("objectives")))


@pytest.fixture()
def live() -> tuple[Any, Any]:
    tokenizer = fx.make_tokenizer()
    model = fx.make_model(tokenizer)
    fx.set_bigram(model, tokenizer, fx.RIGHT)
    return model, tokenizer


def objective(name: str, task: str, metric: str, **kw: Any) -> ObjectiveSpec:
    return ObjectiveSpec(name=name, task=task, metric=metric, **kw)


def bound(
    specs: list[ObjectiveSpec], tasks_dir: str, live: tuple[Any, Any], batch_size: int | str = 4, **kw: Any
) -> LmEvalObjectives:
    objectives = LmEvalObjectives(specs, tasks_dir=tasks_dir, batch_size=batch_size, **kw)  # type: ignore[arg-type]
    objectives.bind(live[0], live[1], CPU)
    return objectives


def values(scores: dict[str, TaskScore]) -> dict[str, float]:
    return {k: s.value for k, s in scores.items()}


def test_in_place_weight_changes_change_the_scores(tasks_dir: str, live: tuple[Any, Any]) -> None:
    model, tokenizer = live
    objectives = bound(
        [objective("gen", fx.GEN_TASK, "exact_match"), objective("mc", fx.MC_TASK, "acc")], tasks_dir, live
    )
    right = objectives.evaluate()
    assert right == {
        "gen": TaskScore(
            1.0, {"exact_match,none": 1.0, "exact_match_stderr,none": 0.0}, 6, stderr=0.0,
            outcomes={fx.GEN_TASK: [1.0] * 6},
        ),
        "mc": TaskScore(1.0, {"acc,none": 1.0, "acc_stderr,none": 0.0}, 6, stderr=0.0, outcomes={fx.MC_TASK: [1.0] * 6}),
    }
    fx.set_bigram(model, tokenizer, HALF_WRONG)
    half = objectives.evaluate()
    assert values(half) == {"gen": 0.5, "mc": 0.5}
    assert half["gen"].metrics["exact_match_stderr,none"] == pytest.approx(STDERR_HALF_OF_6)
    assert half["mc"].metrics["acc_stderr,none"] == pytest.approx(STDERR_HALF_OF_6)
    # The score's own standard error (what the search's GPs take as noise) is the metric's stderr.
    assert half["gen"].stderr == half["gen"].metrics["exact_match_stderr,none"]
    assert half["mc"].stderr == half["mc"].metrics["acc_stderr,none"]
    fx.set_bigram(model, tokenizer, {letter: "1" for letter in fx.LETTERS})  # only "a" right
    assert values(objectives.evaluate()) == {"gen": pytest.approx(1 / 6), "mc": pytest.approx(1 / 6)}
    fx.set_bigram(model, tokenizer, fx.RIGHT)
    assert objectives.evaluate() == right


def test_same_weights_score_the_same_and_print_nothing(
    tasks_dir: str, live: tuple[Any, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer = live
    fx.set_bigram(model, tokenizer, HALF_WRONG)
    # num_fewshot exercises lm-eval's few-shot sampler, whose RNG would otherwise advance between calls.
    specs = [objective("gen", fx.GEN_TASK, "exact_match", num_fewshot=2), objective("mc", fx.MC_TASK, "acc")]
    objectives = bound(specs, tasks_dir, live)
    capfd.readouterr()
    first = objectives.evaluate()
    second = objectives.evaluate()
    out, err = capfd.readouterr()
    assert first == second
    assert values(first) == {"gen": 0.5, "mc": 0.5}
    assert (out, err) == ("", "")


def test_the_wrapper_holds_the_live_model_without_copying_moving_or_casting(
    tasks_dir: str, live: tuple[Any, Any]
) -> None:
    model = live[0]
    model.to(torch.bfloat16)
    before = {n: (p.data_ptr(), p.dtype, p.device) for n, p in model.named_parameters()}
    objectives = bound([objective("mc", fx.MC_TASK, "acc")], tasks_dir, live)
    assert objectives.lm.model is model
    assert values(objectives.evaluate()) == {"mc": 1.0}
    assert {n: (p.data_ptr(), p.dtype, p.device) for n, p in model.named_parameters()} == before


def test_limit_counts_and_fractions_and_one_task_at_two_limits(tasks_dir: str, live: tuple[Any, Any]) -> None:
    model, tokenizer = live
    fx.set_bigram(model, tokenizer, HALF_WRONG)
    specs = [
        objective("gen_all", fx.GEN_TASK, "exact_match"),
        objective("gen_4", fx.GEN_TASK, "exact_match", limit=4),
        objective("mc_half", fx.MC_TASK, "acc", limit=0.5),
        objective("mc_whole", fx.MC_TASK, "acc", limit=1.0),
    ]
    scores = bound(specs, tasks_dir, live, subset="first").evaluate()  # lm-eval's --limit: the first documents
    assert {k: (s.value, s.n_examples) for k, s in scores.items()} == {
        "gen_all": (0.5, 6),
        "gen_4": (0.75, 4),
        "mc_half": (1.0, 3),
        "mc_whole": (0.5, 6),
    }


def test_stages_score_new_documents_only_and_combine_to_the_full_score(tasks_dir: str, live: tuple[Any, Any]) -> None:
    model, tokenizer = live
    fx.set_bigram(model, tokenizer, HALF_WRONG)  # d, e, f wrong; on the first four letters only d
    specs = [objective("both", fx.GROUP, "exact_match")]
    staged = bound(specs, tasks_dir, live, subset="first", stages=[0.5, 1.0])
    first, second = staged.evaluate(0), staged.evaluate(1)
    # Group of 6 + 4 documents: stage 0 the first 3 and 2 (a, b, c | a, b), stage 1 the rest (d, e, f | c, d).
    assert first["both"].outcomes == {fx.GEN_TASK: [1.0, 1.0, 1.0], fx.GEN4_TASK: [1.0, 1.0]}
    assert second["both"].outcomes == {fx.GEN_TASK: [0.0, 0.0, 0.0], fx.GEN4_TASK: [1.0, 0.0]}
    joined = {leaf: first["both"].outcomes[leaf] + second["both"].outcomes[leaf] for leaf in first["both"].outcomes}
    combined = staged.combine("both", joined)
    whole = bound(specs, tasks_dir, live, subset="first").evaluate()["both"]
    assert (combined.value, combined.n_examples) == (whole.value, whole.n_examples) == (pytest.approx(0.6), 10)
    assert combined.stderr == pytest.approx(whole.stderr, rel=1e-12)


def test_stages_need_a_document_per_stage(tasks_dir: str) -> None:
    with pytest.raises(MmmoError, match=r"task 'mmmo_test_gen' has 2 document\(s\) for 3 evaluation.stages"):
        LmEvalObjectives(
            [objective("gen", fx.GEN_TASK, "exact_match", limit=2)], tasks_dir=tasks_dir, stages=[0.2, 0.5, 1.0]
        )


def test_group_objective_aggregates_its_tasks(tasks_dir: str, live: tuple[Any, Any]) -> None:
    model, tokenizer = live
    fx.set_bigram(model, tokenizer, HALF_WRONG)
    scores = bound([objective("both", fx.GROUP, "exact_match")], tasks_dir, live).evaluate()
    # 3/6 on the six letters and 3/4 on the first four, weighted by size: 6/10.
    assert scores["both"].value == pytest.approx(0.6)
    assert scores["both"].n_examples == 10


def test_metric_with_an_explicit_filter(tasks_dir: str, live: tuple[Any, Any]) -> None:
    scores = bound([objective("gen", fx.GEN_TASK, "exact_match,none")], tasks_dir, live).evaluate()
    assert values(scores) == {"gen": 1.0}


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (
            "acc",
            "objective 'gen': task 'mmmo_test_gen' does not report metric 'acc'; available: exact_match,none",
        ),
        (
            "exact_match,strict-match",
            (
                "objective 'gen': task 'mmmo_test_gen' does not report metric 'exact_match,strict-match'; "
                "available: exact_match,none"
            ),
        ),
    ],
)
def test_unknown_metric_fails_at_construction(tasks_dir: str, metric: str, message: str) -> None:
    with pytest.raises(MmmoError) as info:
        LmEvalObjectives([objective("gen", fx.GEN_TASK, metric)], tasks_dir=tasks_dir)
    assert str(info.value) == message


def test_group_metric_not_aggregated_fails_at_construction(tasks_dir: str) -> None:
    with pytest.raises(MmmoError) as info:
        LmEvalObjectives([objective("both", fx.GROUP, "acc")], tasks_dir=tasks_dir)
    assert str(info.value) == (
        "objective 'both': group 'mmmo_test_group' does not report metric 'acc'; available: exact_match,none"
    )


def test_unknown_task_fails_at_construction(tasks_dir: str) -> None:
    # Looks through all of lm-eval's built-in tasks too (the slow part of this module).
    with pytest.raises(MmmoError) as info:
        LmEvalObjectives([objective("gen", "mmmo_test_gem", "exact_match")], tasks_dir=tasks_dir)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(
        f"objective 'gen': unknown lm-eval task 'mmmo_test_gem' (not in tasks_dir {tasks_dir} or lm-eval's "
        "built-in tasks); closest: mmmo_test_gen"
    )
    assert text.endswith("; tasks_dir holds: mmmo_test_gen, mmmo_test_gen4, mmmo_test_group, mmmo_test_mc")


@pytest.mark.parametrize("limit", [0, -2, 0.0, 2.5])
def test_bad_limit_fails_at_construction(tasks_dir: str, limit: float) -> None:
    with pytest.raises(
        MmmoError, match=r"^objective 'gen': limit must be a count >= 1 or a fraction in \(0, 1\]"
    ):
        LmEvalObjectives([objective("gen", fx.GEN_TASK, "exact_match", limit=limit)], tasks_dir=tasks_dir)


def test_nan_weights_are_an_evaluation_error_and_the_next_candidate_still_scores(
    tasks_dir: str, live: tuple[Any, Any]
) -> None:
    model = live[0]
    objectives = bound(
        [objective("gen", fx.GEN_TASK, "exact_match"), objective("mc", fx.MC_TASK, "acc")], tasks_dir, live
    )
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(EvaluationError, match="^evaluation failed: the model produced NaN or \\+inf logits$"):
        objectives.evaluate()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.zero_()
    assert values(objectives.evaluate()) == {"gen": 1.0, "mc": 1.0}


def test_a_failing_forward_is_an_evaluation_error_and_the_next_candidate_still_scores(
    tasks_dir: str, live: tuple[Any, Any]
) -> None:
    model, _ = live
    objectives = bound([objective("mc", fx.MC_TASK, "acc")], tasks_dir, live)

    def out_of_memory(*_: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = model.register_forward_pre_hook(out_of_memory)
    with pytest.raises(EvaluationError) as info:
        objectives.evaluate()
    assert (
        str(info.value)
        == "evaluation failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    handle.remove()
    scores = objectives.evaluate()
    assert (scores["mc"].value, scores["mc"].n_examples) == (1.0, 6)


def test_auto_batch_size_on_cpu(tasks_dir: str, live: tuple[Any, Any]) -> None:
    objectives = bound([objective("gen", fx.GEN_TASK, "exact_match")], tasks_dir, live, batch_size="auto")
    assert objectives.lm.batch_size == 32
    assert values(objectives.evaluate()) == {"gen": 1.0}


def test_auto_batch_size_is_probed_once_per_request_type(
    tasks_dir: str, live: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:

    # lm-eval's probe (it halves the batch on CUDA OOM) normally runs only on CUDA; force it on CPU.
    monkeypatch.setattr(lm_eval_objectives, "NON_CUDA_AUTO_BATCH", "auto")
    probes = fx.count_batch_size_probes(monkeypatch)
    specs = [objective("gen", fx.GEN_TASK, "exact_match"), objective("mc", fx.MC_TASK, "acc")]
    objectives = bound(specs, tasks_dir, live, batch_size="auto")
    assert values(objectives.evaluate()) == {"gen": 1.0, "mc": 1.0}
    assert probes == [64, 64]  # generate_until and loglikelihood, each at lm-eval's max_batch_size
    capfd.readouterr()
    assert values(objectives.evaluate()) == {"gen": 1.0, "mc": 1.0}
    assert probes == [64, 64]
    assert capfd.readouterr() == ("", "")  # lm-eval prints about every probe


def test_non_task_objectives_are_ignored(tasks_dir: str, live: tuple[Any, Any]) -> None:
    specs = [ObjectiveSpec(name="sparsity", type="sparsity"), objective("mc", fx.MC_TASK, "acc")]
    objectives = bound(specs, tasks_dir, live)
    assert objectives.names == ["mc"]
    assert values(objectives.evaluate()) == {"mc": 1.0}


def test_bind_refuses_a_model_on_another_device(tasks_dir: str, live: tuple[Any, Any]) -> None:
    objectives = LmEvalObjectives([objective("mc", fx.MC_TASK, "acc")], tasks_dir=tasks_dir)
    with pytest.raises(MmmoError, match="^the model is on cpu but evaluation was asked for on meta$"):
        objectives.bind(live[0], live[1], torch.device("meta"))


# ------------------------------------------------------------------------------------------ device


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else CPU
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_cuda() -> None:
    with pytest.raises(MmmoError, match="^device 'cuda:1' was asked for but CUDA is not available"):
        resolve_device("cuda:1")


def test_default_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_dtype(CPU, None) == torch.float32
    assert default_dtype(CPU, "bfloat16") == torch.bfloat16
    assert default_dtype(CPU, "float16") == torch.float16
    assert default_dtype(CPU, "float64") == torch.float64  # the one dtype table (mmmo.runtime.dtypes) has it
    monkeypatch.setattr(device_mod, "has_native_bf16", lambda: True)
    assert default_dtype(torch.device("cuda", 0), None) == torch.bfloat16
    monkeypatch.setattr(device_mod, "has_native_bf16", lambda: False)
    assert default_dtype(torch.device("cuda", 0), None) == torch.float16
    with pytest.raises(MmmoError, match="^unknown dtype 'fp8': use one of float32, bfloat16, float16, float64$"):
        default_dtype(CPU, "fp8")


# -------------------------------------------------------------------------------------------- demo


def test_demo_weights_copied_into_one_live_model_score_as_freshly_loaded(demo_paths: Any) -> None:
    """The demo's weights copied one after another into one live model, as the merge engine does, score
    exactly as each model loaded on its own. (What they score is a claim about the trained demo, asserted once
    in test_demo.py.)"""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmmo.demo import SKILLS, TASK_PREFIX

    tokenizer = AutoTokenizer.from_pretrained(demo_paths.base)
    specs = [objective(s, f"{TASK_PREFIX}{s}", "exact_match", limit=50) for s in SKILLS]

    def bound_to(folder: Path) -> tuple[LmEvalObjectives, dict[str, Any]]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        objectives = LmEvalObjectives(specs, tasks_dir=str(demo_paths.tasks_dir), batch_size=64)
        objectives.bind(model, tokenizer, CPU)
        return objectives, dict(model.named_parameters())

    live, params = bound_to(demo_paths.base)

    def score(folder: Path) -> dict[str, float]:
        with torch.no_grad():
            for name, tensor in load_file(folder / "model.safetensors").items():
                params[name].copy_(tensor)
        scores = live.evaluate()
        assert {s.n_examples for s in scores.values()} == {50}
        return values(scores)

    table = {"base": score(demo_paths.base)} | {s: score(demo_paths.experts[s]) for s in SKILLS}
    assert len({tuple(row.values()) for row in table.values()}) > 1  # the copies did change the model
    for name, folder in [("sort", demo_paths.experts["sort"]), ("arith", demo_paths.experts["arith"])]:
        fresh, _ = bound_to(folder)
        assert values(fresh.evaluate()) == table[name], name
    assert score(demo_paths.base) == table["base"]  # nothing of the experts lingers
