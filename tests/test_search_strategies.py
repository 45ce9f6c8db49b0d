"""Batch strategies: seeding, dedupe against history, fallbacks and the ablation flags."""

from __future__ import annotations

import sys

import pytest
import torch
from search_problems import CHEAP, objectives, search_options

from mmmo.optimizer import strategies
from mmmo.optimizer.acquisition import propose_hvi
from mmmo.optimizer.gp import fit_models
from mmmo.optimizer.history import History
from mmmo.optimizer.strategies import batch_seed, initial_design, propose_batch, sobol_points
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import OptimizerSpec, WeakToStrongSpec

T = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def history(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    X = initial_design(n, 2, seed)
    return X, objectives(X)


def propose(
    opt: OptimizerSpec,
    X: torch.Tensor,
    Y: torch.Tensor,
    batch_index: int = 1,
    seen: torch.Tensor | None = None,
):
    return propose_batch(
        search_options(opt, 2, Y.shape[-1], 2, budget=CHEAP),
        History(X_done=X, Y_done=Y, X_seen=X if seen is None else seen),
        batch_index=batch_index,
    )


def test_initial_design_is_seeded_sobol_in_the_unit_cube() -> None:
    X = initial_design(7, 3, seed=4)
    assert X.shape == (7, 3) and X.dtype == T
    assert ((X >= 0) & (X < 1)).all()
    torch.testing.assert_close(initial_design(7, 3, seed=4), X)
    assert not torch.allclose(initial_design(7, 3, seed=5), X)
    opt = OptimizerSpec(initial=7, seed=4)
    batch0 = propose_batch(
        search_options(opt, 3, 2, 1),
        History(X_done=torch.zeros(0, 3), Y_done=torch.zeros(0, 2), X_seen=torch.zeros(0, 3)), batch_index=0,
    )  # fmt: skip
    assert [p.step for p in batch0] == ["sobol"] * 7
    torch.testing.assert_close(torch.tensor([p.x for p in batch0], dtype=T), X)


def test_batch_seeds_differ_by_batch_and_run_seed() -> None:
    seeds = {batch_seed(s, b) for s in range(3) for b in range(5)}
    assert len(seeds) == 15
    assert batch_seed(1, 2) == batch_seed(1, 2)


@pytest.mark.parametrize("strategy", ["mm-mo", "qnehvi", "random", "nsga2"])
def test_same_seed_same_proposals(strategy: str) -> None:
    X, Y = history()
    opt = OptimizerSpec(strategy=strategy, initial=8, candidates=4, batch_size=3, seed=11)
    first = propose(opt, X, Y)
    again = propose(opt, X, Y)
    assert [(p.x, p.step) for p in again] == [(p.x, p.step) for p in first]
    assert len(first) == 3
    assert all(0.0 <= v <= 1.0 for p in first for v in p.x)
    if strategy in ("random", "nsga2"):  # cheap; the GP strategies differ through the same batch_seed
        other = propose(opt.model_copy(update={"seed": 12}), X, Y)
        assert [p.x for p in other] != [p.x for p in first]
    expected = {"mm-mo": {"take_home", "acquisition", "weak_to_strong"}, "qnehvi": {"take_home", "acquisition"},
                "random": {"random"}, "nsga2": {"nsga2"}}[strategy]  # fmt: skip
    assert {p.step for p in first} <= expected | {"sobol"}
    assert {p.step for p in first} & expected


def test_random_continues_the_sobol_sequence_and_never_repeats_a_seen_point() -> None:
    opt = OptimizerSpec(strategy="random", initial=4, candidates=3, batch_size=3, seed=2)
    X = initial_design(4, 2, 2)
    batch2 = propose(opt, X, objectives(X), batch_index=2)
    torch.testing.assert_close(torch.tensor([p.x for p in batch2], dtype=T), sobol_points(7 + 3, 2, 2)[7:])
    # Every point it would propose was already tried (and failed): all three are replaced by new Sobol points.
    seen = torch.cat([X, sobol_points(10, 2, 2)[7:]])
    got = propose(opt, X, objectives(X), batch_index=2, seen=seen)
    assert [p.step for p in got] == ["sobol"] * 3
    P = torch.tensor([p.x for p in got], dtype=T)
    assert torch.cdist(P, seen, p=float("inf")).min() > 1e-6
    assert torch.cdist(P, P, p=float("inf")).add(torch.eye(3, dtype=T)).min() > 1e-6


def test_too_few_done_trials_fall_back_gracefully() -> None:
    opt = OptimizerSpec(strategy="mm-mo", initial=2, candidates=4, batch_size=2, seed=0, take_home_points=1)
    X, Y = history(1)
    assert [p.step for p in propose(opt, X, Y)] == ["sobol", "sobol"]
    X, Y = history(2)  # enough for a GP, not for weak-to-strong (needs 3): one point on the take-home target
    assert [p.step for p in propose(opt, X, Y)] == ["take_home", "acquisition"]


def test_mm_mo_with_both_steps_off_keeps_the_first_acquisition_candidates() -> None:
    X, Y = history()
    opt = OptimizerSpec(
        strategy="mm-mo", initial=8, candidates=5, batch_size=2, seed=3,
        weak_to_strong=WeakToStrongSpec(enabled=False), fisher_screening=False, take_home_points=0,
    )  # fmt: skip
    got = propose(opt, X, Y)
    assert [p.step for p in got] == ["acquisition"] * 2
    cands = propose_hvi(fit_models(X, Y), X, None, 5, seed=batch_seed(3, 1), Y_baseline=Y, budget=CHEAP)
    torch.testing.assert_close(torch.tensor([p.x for p in got], dtype=T), cands[:2])


def test_paper_crossover_ranks_on_task_columns_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    real = strategies.weak_to_strong

    def spy(proposals: torch.Tensor, X_done: torch.Tensor, Y_task_done: torch.Tensor, **kw: object):
        seen.append(Y_task_done.clone())
        return real(proposals, X_done, Y_task_done, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(strategies, "weak_to_strong", spy)
    X, Y = history()
    opt = OptimizerSpec(
        strategy="mm-mo", initial=8, candidates=2, batch_size=2, seed=0, fisher_screening=False, take_home_points=0,
        weak_to_strong=WeakToStrongSpec(enabled=True, mode="crossover"),
    )  # fmt: skip
    got = propose(opt, X, Y)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], Y[:, [0, 1]])  # the sparsity column (2) is left out
    assert {p.step for p in got} == {"weak_to_strong"}


def test_nsga2_without_optuna_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    X, Y = history()
    with pytest.raises(MmmoError, match="pip install"):
        propose(OptimizerSpec(strategy="nsga2", initial=8, candidates=3, batch_size=3), X, Y)


def test_ref_point_of_the_wrong_length_is_refused() -> None:
    X, Y = history()
    with pytest.raises(MmmoError, match="ref_point has 2 values but there are 3 objectives"):
        propose(
            OptimizerSpec(strategy="qnehvi", initial=8, candidates=3, batch_size=3, ref_point=[0, 0]), X, Y
        )
