"""The demo problem: data and caching logic, and (through lm-eval itself) that merging its experts pays off.

The full demo comes from the session fixture `demo_paths` in conftest.py (built once, cached).
"""

from __future__ import annotations

import copy
import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mmmo import demo as D
from mmmo.demo import build as demo_build
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[1]

# The claims below are about the trained demo, and each is asserted here only. Training is chaotic: another
# CPU kernel set (AVX-512, AVX2, ARM) or another seed gives different weights, a different draw. So every claim
# is one that held, with room to spare, on every draw of the calibration (scripts/demo_calibration.py; the
# draws and their margins are in benchmarks/RESULTS.md), and .ci/run checks them again under a second kernel
# choice on a freshly built demo.

# Task-arithmetic merge used to show that merging matters: base + Σ TA_WEIGHT·(expert − base).
TA_WEIGHT = 0.5
# Every expert masters its own task (lowest over the calibration draws: 0.88) and beats the base there.
EXPERT_MASTERY = 0.8
# The TA merge beats the base by at least this much on at least two tasks (every draw had two gains >= 0.14).
MERGE_MARGIN = 0.1
# ... and beats every expert, on the mean of the two tasks outside its own, by this much (lowest: 0.15).
OUTSIDE_MARGIN = 0.08

# A build small enough for the caching tests (a second or two).
TINY = replace(
    D.DEFAULT_PARAMS,
    hidden_size=16,
    intermediate_size=32,
    layers=1,
    heads=2,
    batch_size=4,
    base_steps=2,
    expert_steps=2,
    warmup_steps=1,
    eval_examples=5,
)


# ------------------------------------------------------------------------------------ pure parts


def test_examples_are_correct() -> None:
    rng = random.Random(0)
    for _ in range(200):
        prompt, answer = D.sample_example("arith", rng)
        a, b = map(int, re.fullmatch(r"add (\d\d)\+(\d)=", prompt).groups())  # type: ignore[union-attr]
        assert int(answer) == a + b
        for skill, fn in [("copy", lambda w: w), ("reverse", lambda w: w[::-1]), ("sort", sorted)]:
            prompt, answer = D.sample_example(skill, rng, (3, 6))
            word = re.fullmatch(r"\w+ ([a-z]{3,6})=", prompt).group(1)  # type: ignore[union-attr]
            assert answer == "".join(fn(word))
    assert D.sample_example("reverse", random.Random(1), (4, 4))[0].startswith("rev ")


def test_heldout_is_deterministic_distinct_and_never_trained_on() -> None:
    params = replace(D.DEFAULT_PARAMS, word_len=(3, 3))  # few possible words, so collisions are likely
    for skill in D.SKILLS:
        held = D.heldout_examples(skill, params)
        assert held == D.heldout_examples(skill, params)
        assert len({p for p, _ in held}) == params.eval_examples
    heldout = {p for s in D.SKILLS for p, _ in D.heldout_examples(s, params)}
    drawn = D.SkillSampler({s: 1.0 for s in D.SKILLS}, heldout, "t", params.word_len).draw(20000)
    # Unfiltered, about 20000/3·50/900 ≈ 370 arithmetic draws alone would hit a held-out prompt.
    assert not {p for p, _ in drawn} & heldout


def test_tokenizer_is_character_level_with_bos() -> None:
    tok = D.make_tokenizer()
    ids = tok("rev ab=")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == 1 + len("rev ab=")
    assert tok.decode(tok("add 12+34=46\nx y")["input_ids"], skip_special_tokens=True) == "add 12+34=46\nx y"
    assert {tok.pad_token, tok.eos_token, tok.bos_token} == {"<pad>", "</s>", "<s>"}


def test_encode_batch_masks_everything_but_the_answer() -> None:
    vocab = D.make_tokenizer().get_vocab()
    ids, mask, labels = D.encode_batch([("cp a=", "a"), ("add 1+1=", "2")], vocab, "cpu")
    assert ids.shape == labels.shape == mask.shape == (2, 1 + 8 + 2)
    assert mask.sum(1).tolist() == [1 + 5 + 2, 1 + 8 + 2]
    assert labels[0].tolist()[6:8] == [vocab["a"], vocab["\n"]]
    assert (labels[0, :6] == -100).all() and (labels[0, 8:] == -100).all()
    assert labels[1].tolist()[-2:] == [vocab["2"], vocab["\n"]]


def test_configs_demo_yaml_matches_the_generated_spec() -> None:
    """The repo's configs/demo.yaml is the generated spec, pointing at ../demo (where `make demo` builds)."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert data == D.demo_spec(D.DEFAULT_PARAMS, prefix="../demo/", output_dir="../runs/demo")
    spec = spec_from_dict(data, REPO / "configs", check_paths=False)
    assert spec.model_names == list(D.SKILLS)
    assert spec.optimizer.budget == 10 + 4 * 5
    assert [o.task for o in spec.task_objectives] == [f"demo_{s}" for s in D.SKILLS]


# ---------------------------------------------------------------------------------------- caching


def _stamp_mtime(root: Path) -> int:
    return (root / "base" / "model.safetensors").stat().st_mtime_ns


def _weights(paths: D.DemoPaths) -> list[bytes]:
    return [(p / "model.safetensors").read_bytes() for p in [paths.base, *paths.experts.values()]]


def test_parallel_build_equals_sequential_build_and_is_deterministic(tmp_path: Path) -> None:
    sequential = D.build_demo(tmp_path / "seq", params=TINY, workers=1)
    parallel = D.build_demo(tmp_path / "par", params=TINY, workers=2)
    assert _weights(sequential) == _weights(parallel)
    assert len(set(_weights(sequential))) == 4  # and the experts did train away from the base


def test_build_is_cached_and_rebuilt_when_stale(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    log: list[str] = []
    paths = D.build_demo(root, params=TINY, progress=log.append, workers=1)
    assert any("training the base" in m for m in log)
    assert paths.experts == {s: root.resolve() / "experts" / s for s in D.SKILLS}
    for p in [paths.base, *paths.experts.values()]:
        assert (p / "model.safetensors").is_file() and (p / "tokenizer.json").is_file()
    first = _stamp_mtime(root)

    log.clear()
    assert D.build_demo(root, params=TINY, progress=log.append) == paths
    assert _stamp_mtime(root) == first and not any("training" in m for m in log)

    D.build_demo(root, params=replace(TINY, seed=1), progress=log.append, workers=1)  # other parameters
    assert any("training the base" in m for m in log)
    second = _stamp_mtime(root)
    assert second != first

    D.build_demo(root, params=replace(TINY, seed=1), force=True, workers=1)
    assert _stamp_mtime(root) != second
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no leftovers


def test_interrupted_build_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "demo"
    real_save = D.save_model

    def save_then_die(model: Any, tokenizer: Any, path: Path) -> None:
        real_save(model, tokenizer, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_build, "save_model", save_then_die)  # where the build looks it up
    with pytest.raises(KeyboardInterrupt):
        D.build_demo(root, params=TINY, workers=1)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # the temp folder is gone too
    (tmp_path / ".demo.building-123-abcd" / "base").mkdir(parents=True)  # as a killed build leaves it

    monkeypatch.setattr(demo_build, "save_model", real_save)
    log: list[str] = []
    D.build_demo(root, params=TINY, progress=log.append, workers=1)
    assert any("training the base" in m for m in log)
    assert D.is_complete_build(root, TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_half_written_folder_is_rebuilt_and_foreign_folder_refused(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    D.build_demo(root, params=TINY, workers=1)
    (root / "experts" / "sort" / "model.safetensors").unlink()  # a damaged build
    assert not D.is_complete_build(root, TINY)
    D.build_demo(root, params=TINY, workers=1)
    assert D.is_complete_build(root, TINY)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MmmoError, match="is not a demo folder"):
        D.build_demo(foreign, params=TINY, workers=1)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_moved_build_is_reused_with_task_paths_repointed(tmp_path: Path) -> None:
    D.build_demo(tmp_path / "a", params=TINY, workers=1)
    (tmp_path / "a").rename(tmp_path / "b")
    log: list[str] = []
    paths = D.build_demo(tmp_path / "b", params=TINY, progress=log.append)
    assert not any("training" in m for m in log)
    task = yaml.safe_load((paths.tasks_dir / "demo_sort.yaml").read_text())
    data_file = Path(task["dataset_kwargs"]["data_files"]["test"])
    assert data_file == paths.tasks_dir / "data" / "sort.jsonl"
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    assert [(r["prompt"], r["answer"]) for r in rows] == D.heldout_examples("sort", TINY)


# ----------------------------------------------------------------------- the full demo, via lm-eval


def _lm_eval_scores(model: Any, tokenizer: Any, tasks_dir: Path) -> dict[str, float]:
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=64, device="cpu")
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    out = evaluator.simple_evaluate(
        model=lm, tasks=[f"demo_{s}" for s in D.SKILLS], task_manager=tm, verbosity="WARNING"
    )
    assert out is not None
    return {s: out["results"][f"demo_{s}"]["exact_match,none"] for s in D.SKILLS}


def _task_arithmetic(base: Any, experts: list[Any], weight: float) -> Any:
    merged = copy.deepcopy(base)
    base_sd = base.state_dict()
    expert_sds = [e.state_dict() for e in experts]
    merged.load_state_dict(
        {k: v + sum(weight * (sd[k] - v) for sd in expert_sds) for k, v in base_sd.items()}
    )
    return merged


@pytest.fixture(scope="module")
def scores(demo_paths: D.DemoPaths) -> dict[str, dict[str, float]]:
    """Exact match of base, each expert and the TA merge on each demo task, measured by lm-eval."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(demo_paths.base)
    base = AutoModelForCausalLM.from_pretrained(demo_paths.base).eval()
    experts = {s: AutoModelForCausalLM.from_pretrained(p).eval() for s, p in demo_paths.experts.items()}
    models = {"base": base, **experts, "merge": _task_arithmetic(base, list(experts.values()), TA_WEIGHT)}
    with D.torch_threads(1):  # far faster for models this small, and robust on a busy machine
        table = {name: _lm_eval_scores(m, tokenizer, demo_paths.tasks_dir) for name, m in models.items()}
    print(
        "\n" + "\n".join(f"{n:8} " + " ".join(f"{s}={v:.2f}" for s, v in r.items()) for n, r in table.items())
    )
    return table


@pytest.mark.slow
def test_demo_spec_loads(demo_paths: D.DemoPaths) -> None:
    spec = load_spec(demo_paths.config)
    assert Path(spec.base_model) == demo_paths.base
    assert [Path(m.path) for m in spec.models] == list(demo_paths.experts.values())
    assert Path(spec.tasks_dir or "") == demo_paths.tasks_dir
    assert spec.merge.method == "dare_ties"


@pytest.mark.demo
@pytest.mark.slow
def test_each_expert_masters_its_own_task(scores: dict[str, dict[str, float]]) -> None:
    for skill in D.SKILLS:
        assert scores[skill][skill] >= EXPERT_MASTERY, (skill, scores)
        assert scores[skill][skill] > scores["base"][skill], (skill, scores)


@pytest.mark.demo
@pytest.mark.slow
def test_task_arithmetic_merge_beats_the_base(scores: dict[str, dict[str, float]]) -> None:
    wins = [s for s in D.SKILLS if scores["merge"][s] >= scores["base"][s] + MERGE_MARGIN]
    assert len(wins) >= 2, scores


@pytest.mark.demo
@pytest.mark.slow
def test_task_arithmetic_merge_beats_each_expert_outside_its_own_task(
    scores: dict[str, dict[str, float]],
) -> None:
    """Merging combines skills: on the two tasks an expert was not trained for, the merge is better than it.

    (Whether the plain 0.5 merge also beats the best expert on the mean of all three depends on the draw: by
    0.08-0.15 on 6 of 8 calibration draws, by 0.02 on one, and it lost by 0.08 on the last, where the base had
    barely learned arithmetic; finding the merge that wins is the search's job. benchmarks/RESULTS.md has every
    draw.)
    """
    for expert in D.SKILLS:
        outside = [task for task in D.SKILLS if task != expert]
        gain = sum(scores["merge"][t] - scores[expert][t] for t in outside) / len(outside)
        assert gain >= OUTSIDE_MARGIN, (expert, gain, scores)
