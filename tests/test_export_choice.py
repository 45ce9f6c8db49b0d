"""What a run calls best and what it exports: ties broken by dominance, the front capped by hypervolume share,
free space checked first, and model cards that round for people."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmmo.optimizer.pareto import hypervolume, hypervolume_contributions
from mmmo.results.export import pareto_by_contribution, select_trials
from mmmo.results.report import report_markdown
from mmmo.results.summary import summarize_run
from mmmo.run.records import Trial
from mmmo.run.store import RunState
from mmmo.runtime.diskspace import DiskFull, check_free_space, human_bytes, is_disk_full
from mmmo.spec.schema import spec_from_dict


def _spec(tmp_path: Path, tasks: int = 2):
    # Every trial below sits at the same point: these pin the observed rule and its ties (tests/test_take_home*.py
    # the posterior's).
    objectives = [{"name": f"t{i}", "task": "t", "metric": "acc"} for i in range(tasks)]
    data = {
        "name": "ex", "base_model": "org/base", "models": ["org/a", "org/b"], "merge": {"method": "ties"},
        "objectives": [*objectives, {"name": "sparsity", "type": "sparsity"}],
        "optimizer": {"initial": 4, "batches": 1, "candidates": 2, "batch_size": 2},
        "output": {"dir": str(tmp_path / "run")}, "take_home": {"choose": "observed"},
    }
    return spec_from_dict(data, tmp_path)


def _done(i: int, *values: float) -> Trial:
    names = [f"t{k}" for k in range(len(values) - 1)] + ["sparsity"]
    return Trial(i, 0, [0.1, 0.2, 0.3, 0.4], "sobol", "done", objectives=dict(zip(names, values)))


def test_a_tie_on_mean_task_score_goes_to_the_trial_that_is_not_dominated(tmp_path: Path) -> None:
    # The run: trials 0 and 9 both average 0.9625 on the tasks; 9 is sparser, so 0 is dominated.
    trials = [_done(0, 0.95, 0.975, -0.020), _done(3, 0.90, 0.90, -0.001)]
    trials += [_done(i, 0.5, 0.6, -0.03) for i in (1, 2, 4, 5, 6, 7, 8)] + [_done(9, 0.95, 0.975, -0.012)]
    summary = summarize_run(_spec(tmp_path), RunState(trials, [], [0.0, 0.0, -0.05], {}))
    assert summary.mean_task_score(trials[0]) == summary.mean_task_score(trials[-1]) == pytest.approx(0.9625)
    assert {t.id for t in summary.pareto} == {3, 9}  # 0 is dominated by 9 (same tasks, worse sparsity)
    assert summary.best().id == 9
    assert "take-home merge: trial 9 (mean task score 0.9625)" in report_markdown(summary, _spec(tmp_path))
    assert [t.id for t in select_trials(summary)] == [9]  # the default export
    assert summary.best("t1").id == 9  # on one objective too: 0 and 9 tie on t1
    assert summary.best("sparsity").id == 3


def test_a_tie_between_two_front_trials_goes_to_the_lower_id(tmp_path: Path) -> None:
    trials = [_done(4, 0.8, 0.6, -0.02), _done(2, 0.6, 0.8, -0.02), _done(7, 0.9, 0.1, -0.001)]
    summary = summarize_run(_spec(tmp_path), RunState(trials, [], None, {}))
    assert summary.best().id == 2


def test_hypervolume_contribution_of_each_front_point() -> None:
    Y = torch.tensor([[1.0, 4.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    # the whole front covers 1*4 + 1*2 + 1*1 = 7 above (0, 0); without (1, 4): 2*2 + 1*1 = 5
    assert hypervolume(Y, [0.0, 0.0]) == pytest.approx(7.0)
    assert hypervolume_contributions(Y, [0.0, 0.0]) == pytest.approx([2.0, 1.0, 1.0, 0.0])  # dominated: 0


def test_the_pareto_export_is_capped_largest_contribution_first(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tasks=1)  # objectives t0 and sparsity: a 2-D front
    trials = [_done(0, 0.1, -0.2), _done(1, 0.4, -0.7), _done(2, 0.2, -0.4), _done(3, 0.3, -0.5)]
    trials.append(_done(4, 0.15, -0.9))  # dominated
    summary = summarize_run(spec, RunState(trials, [], [0.0, -1.0], {}))
    assert {t.id for t in summary.pareto} == {0, 1, 2, 3}
    # above (0, -1): 0 adds (0.1-0)*(0.8-0.6)=0.02, 2 adds (0.2-0.1)*(0.6-0.5)=0.01, 3 adds 0.1*0.2=0.02,
    # 1 adds (0.4-0.3)*0.3=0.03; 0 and 3 tie on 0.02 and 3 has the higher task score
    assert [t.id for t in pareto_by_contribution(summary)] == [1, 3, 0, 2]
    assert [t.id for t in select_trials(summary, pareto=True, limit=2)] == [1, 3]
    assert [t.id for t in select_trials(summary, pareto=True)] == [1, 3, 0, 2]
    assert [t.id for t in select_trials(summary)] == [1]  # default: the best mean task score
    assert spec.output.export == "best" and spec.output.export_limit == 3  # what a spec gets unless it says


def test_free_space_check_is_one_line_with_needed_and_free(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from mmmo.runtime import diskspace

    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    check_free_space(tmp_path, 10**9, "1 merged model(s)", "free some")  # exactly enough
    with pytest.raises(DiskFull) as err:
        check_free_space(tmp_path / "not" / "yet", 3 * 10**9 + 1, "2 merged model(s)", "free some space")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"not enough free space for 2 merged model(s) in {tmp_path / 'not' / 'yet'}: about 3 GB needed, "
        "1 GB free; free some space"
    )
    assert [human_bytes(n) for n in (999, 1500, 15_230_000_000)] == ["999 B", "1.5 kB", "15.2 GB"]


def test_a_full_disk_is_recognised_from_any_library() -> None:
    import errno

    from safetensors import SafetensorError

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # what safetensors' Rust writer raises: no errno, only the text
    assert is_disk_full(SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                        'message: "No space left on device" })'))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_model_card_rounds_weights_and_the_recipe_keeps_them_exact() -> None:
    import yaml

    from mmmo.merge.recipes.recipe import MergeRecipe, to_mergekit_yaml
    from mmmo.merge.recipes.save import model_card

    w = torch.tensor([[0.47510719299316406], [0.0123456789]], dtype=torch.float64)
    d = torch.tensor([[0.8999999761581421], [1.0]], dtype=torch.float64)
    recipe = MergeRecipe.from_arrays("org/base", ["org/a", "org/b"], "dare_ties", w, d, seed=0)
    text = to_mergekit_yaml(recipe)
    card = model_card(recipe, "trial-3", text)
    assert "| `org/a` | 0.475 | 0.9 |" in card and "| `org/b` | 0.0123 | 1 |" in card
    table = card.split("## Recipe")[0]
    assert "0.47510719299316406" not in table and "0.8999999761581421" not in table
    exact = yaml.safe_load(text)
    assert exact["models"][0]["parameters"]["weight"] == 0.47510719299316406  # full precision where it matters
    layered = MergeRecipe.from_arrays("org/base", ["org/a"], "ties", torch.tensor([[0.123456, 0.654321]]))
    assert "| `org/a` | 0.123, 0.654 | - |" in model_card(layered, "t", None)
