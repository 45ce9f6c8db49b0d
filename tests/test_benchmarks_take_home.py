"""The pure parts of benchmarks/take_home.py and benchmarks/best_in_space.py: the share of the available gain,
the take-home of a stored run and the best in the space of a known function."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import best_in_space, problems
from benchmarks import take_home as th
from benchmarks.results import StrategyRun
from mmmo.optimizer.target import Target

MEAN_OF_TASKS = Target((1.0, 1.0, 1.0, 0.0))  # 3 tasks + sparsity, as on the demo problems


def test_share_of_gain_is_the_fraction_of_the_way_from_the_recipe_to_the_best() -> None:
    assert th.share_of_gain(0.83, 0.81, 0.85) == pytest.approx(0.5)
    assert th.share_of_gain(0.85, 0.81, 0.85) == pytest.approx(1.0)
    assert th.share_of_gain(0.81, 0.81, 0.85) == pytest.approx(0.0)
    assert th.share_of_gain(0.79, 0.81, 0.85) == pytest.approx(-0.5)
    assert math.isnan(th.share_of_gain(math.nan, 0.81, 0.85))
    with pytest.raises(ValueError, match="must exceed"):
        th.share_of_gain(0.8, 0.81, 0.81)


def test_library_strategies_choose_by_posterior_and_baselines_by_their_best_observed() -> None:
    for s in ["mm-mo", "mm-mo (former default, k = 0)", "mm-mo (new default)", "qnehvi", "mm-mo take-home 2"]:
        assert th.take_home_rule(s) == "posterior", s
    for s in ["random", "nsga2", "cma-es", "standard recipe", th.SINGLE_OBJECTIVE]:
        assert th.take_home_rule(s) == "observed", s


def _run() -> StrategyRun:
    # Row 1 looks best as observed (0.9 mean) but is truly 0.6; row 2 is truly the best (0.8).
    y = [[0.5, 0.5, 0.5, 0.0], [0.6, 0.6, 0.6, 0.0], [0.8, 0.8, 0.8, 0.0], [0.7, 0.7, 0.7, 0.0]]
    y_obs = [[0.5, 0.5, 0.5, 0.0], [0.9, 0.9, 0.9, 0.0], [0.7, 0.8, 0.75, 0.0], [0.7, 0.6, 0.6, 0.0]]
    return StrategyRun(strategy="mm-mo", seed=0, x=[[0.1], [0.4], [0.6], [0.9]], y=y, y_obs=y_obs, seconds=1.0)


def test_the_take_home_of_a_stored_run_is_the_true_value_of_what_it_observed_best() -> None:
    got = th.take_home(_run(), MEAN_OF_TASKS, "observed")
    assert (got.evaluations, got.row) == (4, 1)
    assert got.value == pytest.approx(0.6)  # the winner's curse: the true value, not the observed 0.9
    first = th.take_home(_run(), MEAN_OF_TASKS, "observed", evaluations=1)
    assert (first.evaluations, first.row, first.value) == (1, 0, pytest.approx(0.5))


def test_a_take_home_meets_the_constraints_as_observed_or_is_none() -> None:
    arith_at_least = Target((1.0, 1.0, 1.0, 0.0), ((0, 0.65),))
    got = th.take_home(_run(), arith_at_least, "observed")
    assert got.row == 1  # observed arith 0.9 >= 0.65 (its true 0.6 would not be: what was observed decides)
    reverse_at_least = Target((1.0, 1.0, 1.0, 0.0), ((1, 0.75),))
    got = th.take_home(_run(), reverse_at_least, "observed")
    assert (got.row, got.value) == (1, pytest.approx(0.6))
    nothing = th.take_home(_run(), Target((1.0, 1.0, 1.0, 0.0), ((2, 0.95),)), "observed")
    assert nothing.row is None and math.isnan(nothing.value)


def test_a_failed_evaluation_is_never_taken_home() -> None:
    run = _run()
    run.observed[1] = [math.nan] * 4
    got = th.take_home(run, MEAN_OF_TASKS, "observed")
    assert (got.row, got.value) == (2, pytest.approx(0.8))


def test_noise_free_posterior_choice_takes_the_best_observed() -> None:
    y = [[v, v, v, 0.0] for v in [0.1, 0.3, 0.5, 0.9, 0.6, 0.4, 0.2, 0.1]]
    run = StrategyRun(strategy="mm-mo", seed=0, x=[[i / 7] for i in range(8)], y=y, seconds=1.0)
    got = th.take_home(run, MEAN_OF_TASKS, "posterior")
    assert (got.row, got.value) == (3, pytest.approx(0.9))


def test_the_stderr_told_to_the_optimizer_is_recomputed_from_the_observed_scores() -> None:
    noise = problems.binomial_noise(50, [0, 1, 2])
    Y = torch.tensor([[0.2, 0.5, 0.9, -0.01], [0.7, 0.1, 0.4, -0.02]], dtype=torch.float64)
    Y_obs, S = noise(Y, torch.Generator().manual_seed(3))
    assert torch.equal(problems.binomial_stderr(Y_obs, 50, [0, 1, 2]), S)
    p = Y_obs[0, 0]
    assert float(S[0, 0]) == pytest.approx(math.sqrt(float(p * (1 - p)) / 49))
    assert float(S[0, 3]) == 0.0


def test_best_in_space_finds_a_known_maximum() -> None:
    value = lambda X: -((X - 0.3) ** 2).sum(-1)  # noqa: E731  max 0 at (0.3, 0.3, 0.3)
    v, x, share = best_in_space.best_in_space(value, 3, samples=256, top=2)
    assert v == pytest.approx(0.0, abs=1e-8)
    assert x == pytest.approx([0.3, 0.3, 0.3], abs=1e-4)
    assert share == 1.0


def test_best_in_space_keeps_to_the_feasible_region() -> None:
    value = lambda X: X[:, 0] + X[:, 1]  # noqa: E731  max 2 at (1, 1), but x0 <= 0.5: 1.5 at (0.5, 1)
    slack = lambda X: (0.5 - X[:, 0]).unsqueeze(-1)  # noqa: E731
    v, x, share = best_in_space.best_in_space(value, 2, slack=slack, samples=512, top=3)
    assert v == pytest.approx(1.5, abs=1e-6)
    assert x == pytest.approx([0.5, 1.0], abs=1e-5)
    assert share == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="feasible"):
        best_in_space.best_in_space(value, 2, slack=lambda X: (X[:, :1] - 2.0), samples=64)


def _noisy_problem() -> problems.Problem:
    budget = problems.Budget(initial=4, batches=0, batch_size=1, candidates=1)
    return problems.Problem(name="toy", dim=1, objectives=["a", "b", "c", "sparsity"], tasks=["a", "b", "c"],
                            evaluate=lambda X: X, ref_point=[0.0] * 4, budget=budget, n_examples=50)


def test_replaying_a_run_without_rescoring_is_the_posterior_take_home() -> None:
    from benchmarks import rescore_top

    run, problem = _run(), _noisy_problem()
    plain = rescore_top.choose(run, problem, rescore_top.Variant(None, 0, 0), torch.Generator().manual_seed(0))
    assert plain == th.take_home(run, problem.target(), "posterior", th.stderr_model(problem)).value
    early = rescore_top.choose(run, problem, rescore_top.Variant(1, 0, 0), torch.Generator().manual_seed(0))
    assert early == pytest.approx(0.5)  # after one evaluation, the only merge there is
    assert rescore_top.Variant(25, 5, 1).cost(30) == 30 and rescore_top.Variant(None, 3, 3).cost(30) == 39


def test_rescoring_pools_the_documents_and_shrinks_the_stderr() -> None:
    from benchmarks import rescore_top

    Y = torch.tensor([[0.8, 0.5, 0.0]], dtype=torch.float64)
    one = problems.binomial_stderr(Y, torch.tensor([[50.0]], dtype=torch.float64), [0, 1])
    four = problems.binomial_stderr(Y, torch.tensor([[200.0]], dtype=torch.float64), [0, 1])
    assert float(one[0, 0]) == pytest.approx(math.sqrt(0.8 * 0.2 / 49)) and float(one[0, 2]) == 0.0
    assert float(four[0, 1]) == pytest.approx(math.sqrt(0.25 / 199))
    # re-scoring the top merge on many more documents pulls its pooled score to its true value: the lucky row 1
    # (observed 0.9, truly 0.6) loses to row 2 (truly 0.8)
    run, problem = _run(), _noisy_problem()
    got = rescore_top.choose(run, problem, rescore_top.Variant(None, 2, 200), torch.Generator().manual_seed(1))
    assert got == pytest.approx(0.8)
