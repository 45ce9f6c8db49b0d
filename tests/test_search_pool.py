"""The default mm-mo batch: offspring join the acquisition's pool, the batch is the greedy acquisition order,
known noise reaches the GPs, one reference point serves acquisition and report, standard recipes open the run."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from search_problems import CHEAP, objectives, search_options

from mmmo.optimizer import strategies
from mmmo.optimizer.acquisition import AcqBudget, build_acquisition, propose_hvi, propose_hvi_pooled
from mmmo.optimizer.gp import EXACT_NOISE_FRACTION, JITTER_WARNING, fit_models, observation_variance
from mmmo.optimizer.history import History, done_variances
from mmmo.optimizer.loop import NullObserver, run_loop
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.space import SearchSpace, standard_recipes
from mmmo.optimizer.strategies import initial_design, propose_batch
from mmmo.optimizer.weak_to_strong import de_offspring, nondominated_ranks, rank_configs
from mmmo.run.records import Trial
from mmmo.runtime.quiet import expected_warnings
from mmmo.spec.schema import OptimizerSpec, WeakToStrongSpec

T = torch.float64

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def fitted() -> tuple[torch.Tensor, torch.Tensor, object]:
    X = initial_design(8, 2, 0)
    Y = objectives(X)
    return X, Y, fit_models(X, Y)


# ------------------------------------------------------------------ ranking and offspring (hand-built inputs)


def test_nondominated_ranks_peel_fronts() -> None:
    Y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [0.1, 0.1], [0.4, 0.4]], dtype=T)
    assert nondominated_ranks(Y).tolist() == [0, 0, 0, 1, 2, 1]


def test_rank_configs_orders_by_front_then_hypervolume_contribution() -> None:
    # Front 0: (1, 0) and (0, 1) each add 0.1 x ... ; (0.6, 0.6) adds the most volume against (0, 0).
    Y = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.6, 0.6], [0.3, 0.3], [0.9, 0.04]], dtype=T)
    # contributions against (0, 0): row 2: 0.6*0.6 - overlaps = 0.2475; rows 0 and 1: 0.4*0.05 = 0.02 each.
    assert rank_configs(Y, [0.0, 0.0]).tolist() == [2, 0, 1, 3, 4]


def test_de_offspring_come_from_the_best_ranked_only() -> None:
    X = torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.9, 0.9], [0.8, 0.8]], dtype=T)
    # Rows 0-2 are the front (the sparsity-like trade-off); rows 3 and 4 are dominated by row 2.
    Y = torch.tensor([[1.0, 0.0], [0.6, 0.6], [0.0, 1.0], [-1.0, -1.0], [-2.0, -2.0]], dtype=T)
    kids = de_offspring(X, Y, [-3.0, -3.0], n=20, top_k=3, f=0.5, generator=torch.Generator().manual_seed(0))
    assert kids.shape == (20, 2)
    # a + f (b - c) with a, b, c among the three front rows (all on the diagonal between 0.1 and 0.3):
    assert bool((kids[:, 0] == kids[:, 1]).all())
    assert float(kids.min()) >= 0.1 - 0.5 * 0.2 - 1e-12 and float(kids.max()) <= 0.3 + 0.5 * 0.2 + 1e-12
    assert de_offspring(X[:2], Y[:2], [-3.0, -3.0], n=4, top_k=3, f=0.5,
                        generator=torch.Generator()).shape == (0, 2)  # fmt: skip


# ------------------------------------------------------------------ the pool and the greedy batch


def test_a_pool_alone_is_chosen_in_greedy_acquisition_order(fitted) -> None:
    X, Y, model = fitted
    pool = torch.tensor([[0.3, 0.7], [0.7, 0.3], [0.5, 0.5], [0.31, 0.69], [0.0, 0.0], [0.5, 0.9]], dtype=T)
    got, from_pool = propose_hvi_pooled(model, X, None, 3, pool, X_avoid=X, optimize=False, seed=0, Y_baseline=Y,
                                        budget=AcqBudget(mc_samples=64))  # fmt: skip
    assert from_pool.tolist() == [True] * 3
    # By hand: at each step the pool row with the highest value given the rows already picked as pending.
    acqf = build_acquisition(model, X, None, Y_baseline=Y, mc_samples=64, seed=0)
    picked: list[int] = []
    for _ in range(3):
        acqf.set_X_pending(pool[picked] if picked else None)
        with torch.no_grad(), expected_warnings(JITTER_WARNING):  # as inside propose_hvi_pooled
            values = acqf(pool.unsqueeze(1))
        values[picked] = -float("inf")
        picked.append(int(values.argmax()))
    assert len(set(picked)) == 3
    torch.testing.assert_close(got, pool[picked])


def test_pool_rows_next_to_evaluated_points_are_skipped(fitted) -> None:
    X, Y, model = fitted
    pool = torch.cat([X[:3], torch.tensor([[0.5, 0.5]], dtype=T)])
    got, _ = propose_hvi_pooled(model, X, None, 3, pool, X_avoid=X, optimize=False, Y_baseline=Y,
                                budget=AcqBudget(mc_samples=16))
    torch.testing.assert_close(got, pool[3:])


def test_offspring_never_replace_a_proposal(fitted) -> None:
    """Pool rows the acquisition values less than its own optimum change nothing: the batch is propose_hvi's."""
    X, Y, model = fitted
    kw = dict(seed=5, Y_baseline=Y, budget=CHEAP)
    plain = propose_hvi(model, X, None, 3, **kw)
    poor = X[:4] + 1e-3  # next to evaluated points: (almost) no improvement to expect there
    pooled, from_pool = propose_hvi_pooled(model, X, None, 3, poor, X_avoid=X, **kw)
    assert from_pool.tolist() == [False, False, False]
    torch.testing.assert_close(pooled, plain)


def test_a_better_offspring_is_taken_and_counted_once(fitted) -> None:
    X, Y, model = fitted
    kw = dict(seed=5, Y_baseline=Y, budget=CHEAP)
    plain = propose_hvi(model, X, None, 2, **kw)
    # The acquisition's own first choice offered as an offspring, twice: it ties, and the tie goes to the
    # proposal; the copies are then duplicates of a chosen point and are never taken.
    pool = torch.cat([plain[:1], plain[:1]])
    pooled, from_pool = propose_hvi_pooled(model, X, None, 2, pool, X_avoid=X, **kw)
    torch.testing.assert_close(pooled, plain)
    assert from_pool.tolist() == [False, False]
    # With an optimizer too weak to find much (one start among 2 random points, 1 iteration), the grid's
    # best point, offered in the pool, has the higher acquisition value and is taken.
    weak = dict(seed=5, Y_baseline=Y, budget=AcqBudget(num_restarts=1, raw_samples=2, mc_samples=16, maxiter=1))
    own = propose_hvi(model, X, None, 1, **weak)
    acqf = build_acquisition(model, X, None, Y_baseline=Y, mc_samples=16, seed=5)
    grid = torch.cartesian_prod(torch.linspace(0, 1, 41, dtype=T), torch.linspace(0, 1, 41, dtype=T))
    with torch.no_grad():
        best = grid[int(acqf(grid.unsqueeze(1)).argmax())]
        assert float(acqf(best.reshape(1, 1, 2))) > float(acqf(own.unsqueeze(1)))
    pooled, from_pool = propose_hvi_pooled(model, X, None, 1, best.reshape(1, 2), X_avoid=X, **weak)
    assert from_pool.tolist() == [True]
    torch.testing.assert_close(pooled[0], best)


@pytest.mark.parametrize("fisher", [False, True])
def test_mm_mo_offers_its_offspring_to_the_pool(monkeypatch: pytest.MonkeyPatch, fisher: bool) -> None:
    pools: list[torch.Tensor] = []
    real = strategies.propose_hvi_pooled

    def spy(model, X_baseline, ref_point, n, pool, **kw):  # noqa: ANN001, ANN003
        pools.append(pool.clone())
        return real(model, X_baseline, ref_point, n, pool, **kw)

    monkeypatch.setattr(strategies, "propose_hvi_pooled", spy)
    X = initial_design(8, 2, 0)
    Y = objectives(X)
    ref = [-1.0, -1.0, -0.1]
    opt = OptimizerSpec(strategy="mm-mo", initial=8, candidates=3, batch_size=3, seed=1, fisher_screening=fisher, take_home_points=0,
                        weak_to_strong=WeakToStrongSpec(enabled=True, offspring=6))  # fmt: skip
    got = propose_batch(search_options(opt, 2, 3, 2, budget=CHEAP), History(X_done=X, Y_done=Y, X_seen=X),
                        batch_index=1, ref_point=ref)  # fmt: skip
    assert len(got) == 3 and {p.step for p in got} <= {"acquisition", "weak_to_strong"}
    generator = torch.Generator().manual_seed(strategies.batch_seed(1, 1))
    children = de_offspring(X, Y, ref, n=6, top_k=5, f=0.5, generator=generator)
    (pool,) = pools
    if fisher:  # the 3 most informative of the 6 children
        assert pool.shape == (3, 2)
        assert all(any(torch.equal(row, c) for c in children) for row in pool)
    else:
        torch.testing.assert_close(pool, children)
    P = torch.tensor([p.x for p in got], dtype=T)
    assert torch.cdist(P, X, p=float("inf")).min() > 1e-6


def test_without_offspring_mm_mo_is_exactly_qnehvi() -> None:
    X = initial_design(8, 2, 0)
    Y = objectives(X)
    common = dict(initial=8, candidates=3, batch_size=3, seed=4)
    off = OptimizerSpec(strategy="mm-mo", weak_to_strong=WeakToStrongSpec(enabled=False), **common)
    q = OptimizerSpec(strategy="qnehvi", **common)
    done = History(X_done=X, Y_done=Y, X_seen=X)
    assert [(p.x, p.step) for p in propose_batch(search_options(off, 2, 3, 2, budget=CHEAP), done, batch_index=1)] == [
        (p.x, p.step) for p in propose_batch(search_options(q, 2, 3, 2, budget=CHEAP), done, batch_index=1)
    ]


# ------------------------------------------------------------------ noise


def test_observation_variance_floors_extreme_binomial_scores() -> None:
    stderr = torch.tensor([[0.07, 0.0, 0.0], [float("nan"), 0.01, 0.0]], dtype=T)
    n = torch.tensor([[50.0, 50.0, 0.0], [50.0, 50.0, 0.0]], dtype=T)
    var = observation_variance(stderr, n)
    assert var[0, 0] == pytest.approx(0.0049)
    assert var[0, 1] == pytest.approx(1 / 52**2)  # a 0/50 or 50/50 score is not exact
    assert var[0, 2] == 0.0  # sparsity: exact
    assert torch.isnan(var[1, 0])  # unknown stays unknown
    assert var[1, 1] == pytest.approx(1 / 52**2)  # 0.01^2 is below the floor


def test_known_noise_reaches_the_gps_and_unknown_is_inferred(fitted) -> None:
    X, Y, _ = fitted
    Yvar = torch.full_like(Y, 0.01)
    Yvar[:, 1] = float("nan")  # no stderr for this objective: inferred
    Yvar[:, 2] = 0.0  # exact
    model = fit_models(X, Y, Yvar)
    gp0, gp1, gp2 = model.models
    assert isinstance(gp0.likelihood, FixedNoiseGaussianLikelihood)
    # The GP holds the noise in standardised units: the raw variance over the outcome's variance.
    torch.testing.assert_close(gp0.likelihood.noise, torch.full((8,), 0.01, dtype=T) / Y[:, 0].var())
    assert type(gp1.likelihood) is GaussianLikelihood
    torch.testing.assert_close(gp2.likelihood.noise, torch.full((8,), EXACT_NOISE_FRACTION, dtype=T))


def test_the_loop_hands_stderrs_and_the_prior_mean_to_the_gps(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor | None] = []
    priors: list[str] = []
    real = strategies.fit_models_with_prior

    def spy(X: torch.Tensor, Y: torch.Tensor, Yvar: torch.Tensor | None = None, prior_mean: str = "unset", **kw):
        seen.append(None if Yvar is None else Yvar.clone())
        priors.append(prior_mean)
        return real(X, Y, Yvar, prior_mean, **kw)

    monkeypatch.setattr(strategies, "fit_models_with_prior", spy)

    def evaluate(trials: list[Trial]) -> Iterable[Trial]:
        for t in trials:
            y = objectives(torch.tensor([t.x], dtype=T))[0].tolist()
            t.status, t.objectives = "done", {"a": y[0], "b": y[1], "c": y[2]}
            t.stderr, t.n_examples = {"a": 0.05, "c": 0.0}, {"a": 50}
            yield t

    common = dict(dim=2, objective_names=["a", "b", "c"], task_objective_names=["a", "b"], budget=CHEAP)
    opt = OptimizerSpec(strategy="qnehvi", initial=6, batches=1, batch_size=2, candidates=2)
    run_loop([], LoopOptions(opt=opt, **common), evaluate)
    var = seen[-1]
    assert var is not None and var.shape == (6, 3)
    assert torch.allclose(var[:, 0], torch.full((6,), 0.0025, dtype=T))
    assert bool(torch.isnan(var[:, 1]).all()) and bool((var[:, 2] == 0).all())
    run_loop([], LoopOptions(opt=opt.model_copy(update={"known_noise": False, "prior_mean": "fitted"}), **common),
             evaluate)
    assert seen[-1] is None
    assert priors == ["auto", "fitted"]  # the spec's prior mean, the default first


def test_done_variances_of_old_trials_without_stderr_are_unknown() -> None:
    t = Trial(id=0, batch=0, x=[0.5], step="sobol", status="done", objectives={"a": 0.5})
    assert bool(torch.isnan(done_variances([t], ["a"])).all())


# ------------------------------------------------------------------ one reference point


def test_acquisition_and_report_use_the_run_reference_point(monkeypatch: pytest.MonkeyPatch) -> None:
    refs: list[object] = []
    real = strategies.propose_hvi

    def spy(model, X_baseline, ref_point, n, **kw):  # noqa: ANN001, ANN003
        refs.append(None if ref_point is None else list(ref_point))
        return real(model, X_baseline, ref_point, n, **kw)

    monkeypatch.setattr(strategies, "propose_hvi", spy)
    recorded: list[list[float]] = []

    class RefPoints(NullObserver):
        def on_ref_point(self, ref_point: list[float]) -> None:
            recorded.append(ref_point)

    def evaluate(trials: list[Trial]) -> Iterable[Trial]:
        for t in trials:
            y = objectives(torch.tensor([t.x], dtype=T))[0].tolist()
            t.status, t.objectives = "done", {"a": y[0], "b": y[1]}
            yield t

    opt = OptimizerSpec(strategy="qnehvi", initial=6, batches=2, batch_size=2, candidates=2)
    options = LoopOptions(opt=opt, dim=2, objective_names=["a", "b"], task_objective_names=["a", "b"], budget=CHEAP)
    result = run_loop([], options, evaluate, RefPoints())
    assert len(recorded) == 1 and result.ref_point == recorded[0]
    assert refs == [recorded[0], recorded[0]]  # both BO batches, not re-inferred from the growing history


# ------------------------------------------------------------------ standard recipes


def test_standard_recipe_is_equal_weights_and_the_usual_density() -> None:
    space = SearchSpace(model_names=("a", "b"), layer_groups=2, weight_bounds=(0.0, 1.0), density_bounds=(0.1, 1.0))
    x = standard_recipes(space)
    assert x.shape == (1, 8)
    assert space.named(x[0]) == pytest.approx({n: 0.5 for n in space.names})
    narrow = SearchSpace(model_names=("a",), weight_bounds=(0.6, 1.0))
    assert space.named(x[0]) and narrow.named(standard_recipes(narrow)[0]) == pytest.approx({"a.weight": 0.6})


def test_standard_recipes_open_the_initial_design() -> None:
    recipe = torch.tensor([[0.5, 0.25]], dtype=T)
    opt = OptimizerSpec(strategy="mm-mo", initial=4, candidates=2, batch_size=2, seed=3)
    got = propose_batch(search_options(opt, 2, 3, 2, initial_points=recipe),
                        History(X_done=torch.zeros(0, 2, dtype=T), Y_done=torch.zeros(0, 3, dtype=T),
                                X_seen=torch.zeros(0, 2, dtype=T)), batch_index=0)  # fmt: skip
    assert [p.step for p in got] == ["standard", "sobol", "sobol", "sobol"]
    assert got[0].x == [0.5, 0.25]
    torch.testing.assert_close(torch.tensor([p.x for p in got[1:]], dtype=T), initial_design(3, 2, 3))


def test_rank_configs_with_a_limit_is_the_head_of_the_full_order() -> None:
    Y = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.6, 0.6], [0.3, 0.3], [0.9, 0.04], [0.1, 0.1]], dtype=T)
    full = rank_configs(Y, [0.0, 0.0]).tolist()
    assert full == [2, 0, 1, 3, 4, 5]
    assert rank_configs(Y, [0.0, 0.0], limit=4).tolist() == full[:4]
