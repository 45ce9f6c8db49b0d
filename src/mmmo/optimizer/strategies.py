"""Batch proposal strategies: mm-mo (the paper's four steps), qnehvi, random and nsga2.

Every strategy is stateless: a batch is a pure function of the spec, the history and the batch index
(every RNG is seeded from `(opt.seed, batch_index)`), which is what makes runs resumable and repeatable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from botorch.models import ModelListGP
from torch import Tensor
from torch.quasirandom import SobolEngine

from mmmo.optimizer.acquisition import (
    DEFAULT_BUDGET,
    AcqBudget,
    propose_hvi,
    propose_hvi_pooled,
    propose_scalar,
    resolve_ref_point,
)
from mmmo.optimizer.fisher import DEDUPE_TOL, far_from, fisher_screen
from mmmo.optimizer.gp import Surrogates, fit_models_with_prior
from mmmo.optimizer.history import History
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.space import SearchSpace
from mmmo.optimizer.target import Target
from mmmo.optimizer.weak_to_strong import de_offspring, weak_to_strong
from mmmo.runtime.errors import MmmoError
from mmmo.runtime.quiet import expected_warnings
from mmmo.spec.schema import OptimizerSpec

log = logging.getLogger(__name__)

MIN_DONE_FOR_GP = 2
MIN_DONE_FOR_W2S = 3
NSGA2_MAX_ASK_FACTOR = 4


@dataclass
class Proposal:
    """A point to evaluate, in the unit cube, and the step that proposed it."""

    x: list[float]
    step: str
    prior: str | None = None  # the GPs' prior mean it was proposed under (`PriorChoice.describe`); None: no GP


def batch_seed(seed: int, batch_index: int, *slot: int) -> int:
    """A 31-bit seed mixed from the run seed, the batch index and (asynchronous schedule) the slot in the batch."""
    return int(np.random.SeedSequence([seed, batch_index, *slot]).generate_state(1)[0] & 0x7FFFFFFF)


def sobol_points(n: int, dim: int, seed: int, skip: int = 0) -> Tensor:
    """`n` points of the scrambled Sobol sequence seeded by `seed`, after skipping the first `skip`."""
    engine = SobolEngine(dim, scramble=True, seed=seed)
    if skip:
        engine.fast_forward(skip)
    return engine.draw(n, dtype=torch.float64)


def initial_design(n: int, dim: int, seed: int, recipes: Tensor | None = None) -> Tensor:
    """The initial design `[n, dim]`: the `recipes [k, dim]` (at most `n`), then the first `n - k` points of
    a seeded scrambled Sobol sequence."""
    if recipes is None or recipes.shape[0] == 0:
        return sobol_points(n, dim, seed)
    recipes = recipes.to(torch.float64).reshape(-1, dim)[:n]
    return torch.cat([recipes, sobol_points(n - recipes.shape[0], dim, seed)])


def novel_indices(X: Tensor, X_seen: Tensor, tol: float = DEDUPE_TOL) -> list[int]:
    """Indices of rows of `X` farther than `tol` (max-norm) from `X_seen` and from earlier kept rows."""
    kept: list[int] = []
    avoid = X_seen.to(X)
    for i in range(X.shape[0]):
        if bool(far_from(X[i : i + 1], avoid, tol)[0]):
            kept.append(i)
            avoid = torch.cat([avoid, X[i : i + 1]])
    return kept


def _top_up(
    proposals: list[Proposal], n: int, dim: int, X_seen: Tensor, seed: int, space: SearchSpace | None = None
) -> list[Proposal]:
    """Fill `proposals` up to `n` with seeded Sobol points that are new (projected onto a mixed `space`)."""
    if len(proposals) >= n:
        return proposals[:n]
    kept = torch.tensor([p.x for p in proposals], dtype=torch.float64).reshape(-1, dim)
    avoid = torch.cat([X_seen.to(torch.float64).cpu(), kept])
    engine = SobolEngine(dim, scramble=True, seed=seed)
    out = list(proposals)
    for _ in range(64):
        chunk = _projected(engine.draw(max(2 * (n - len(out)), 8), dtype=torch.float64), space)
        for i in novel_indices(chunk, avoid):
            out.append(Proposal(chunk[i].tolist(), "sobol"))
            avoid = torch.cat([avoid, chunk[i : i + 1]])
            if len(out) == n:
                return out
    raise MmmoError(f"could not find {n} new points in a {dim}-dimensional unit cube")


def _novel(X: Tensor, steps: Sequence[str], X_seen: Tensor, limit: int) -> list[Proposal]:
    return [Proposal(X[i].tolist(), steps[i]) for i in novel_indices(X.cpu(), X_seen.cpu())[:limit]]


def propose_batch(
    options: LoopOptions, history: History, *, batch_index: int, ref_point: Sequence[float] | None = None
) -> list[Proposal]:
    """The next batch: `opt.initial` points for batch 0, else `opt.batch_size` points from `opt.strategy`.

    `options` says what is searched and how hard (`optimizer.options.LoopOptions`: the spec's optimizer section,
    the objectives, the space, the take-home target, the acquisition budget and device). `history` is what is
    known (`optimizer.history.History`): its known variances are used only with `opt.known_noise`, its points
    seen are never proposed again, its done batches set NSGA-II's generations. `ref_point` (raw units; the run's
    fixed one) defaults to `options.ref_point`, then `opt.ref_point`, else it is inferred from the history.
    The initial points (unit cube, e.g. the standard recipes) open the initial design, tagged "standard". A
    mixed space (the method a coordinate) has every point projected onto its configurations
    (`SearchSpace.project`), the GPs model its method coordinate as categorical and the acquisition is optimised
    per searched method; any other space changes nothing. The BO strategies spend `options.take_home_slots` of
    each batch on the take-home target, whose constraints the front's acquisition treats as feasibility.
    """
    opt, dim, space, initial_points = options.opt, options.dim, options.space, options.initial_points
    X_done, Y_done, X_seen = _arrays(options, history)
    done_batches = history.done_batches
    seed = batch_seed(opt.seed, batch_index)
    ref = _checked_ref(options, ref_point, Y_done.shape[-1])

    if batch_index == 0:
        n_std = 0 if initial_points is None else min(initial_points.shape[0], opt.initial)
        X0 = initial_design(opt.initial, dim, opt.seed, initial_points)
        X0 = torch.cat([X0[:n_std], _projected(X0[n_std:], space)])
        got = _novel(X0, ["standard"] * n_std + ["sobol"] * (X0.shape[0] - n_std), X_seen, opt.initial)
        return _top_up(got, opt.initial, dim, X_seen, seed, space)

    n = opt.batch_size
    if opt.strategy == "random":
        X = _projected(sobol_points(n, dim, opt.seed, skip=opt.initial + (batch_index - 1) * n), space)
        got = _novel(X, ["random"] * n, X_seen, n)
    elif opt.strategy == "nsga2":
        gens = list(done_batches) if done_batches is not None else default_generations(X_done.shape[0], opt)
        got = _nsga2(X_done.cpu(), Y_done.cpu(), gens, X_seen, dim, seed, n, space)
    elif X_done.shape[0] < MIN_DONE_FOR_GP:
        log.info("batch %d: only %d successful trials, proposing Sobol points", batch_index, X_done.shape[0])
        got = []
    else:  # qnehvi or mm-mo (`_checked_ref` refused any other strategy)
        gps = _fitted_gps(options, history, X_done, Y_done, ref)
        inp = BatchInputs(options, gps.model, X_done, Y_done, X_seen, ref, seed)
        got = _bo_batch(inp, options.take_home_slots(batch_index))
        got = [replace(p, prior=gps.prior.describe()) for p in got]
    return _top_up(got, n, dim, X_seen, seed, space)


def _arrays(options: LoopOptions, history: History) -> tuple[Tensor, Tensor, Tensor]:
    """`X_done [n, d]`, `Y_done [n, m]` (float64, on the options' device) and `X_seen [s, d]` (float64, CPU)."""
    dim = options.dim
    dev = torch.device(options.device) if options.device is not None else history.X_done.device
    X_done = history.X_done.to(dev, torch.float64).reshape(-1, dim)
    Y_done = history.Y_done.to(dev, torch.float64)
    return X_done, Y_done, history.X_seen.to(torch.float64).reshape(-1, dim).cpu()


def _fitted_gps(
    options: LoopOptions, history: History, X_done: Tensor, Y_done: Tensor, ref: Sequence[float] | None
) -> Surrogates:
    """The GPs of a BO proposal: known noise with `opt.known_noise`, the method coordinate categorical in a mixed
    space (a single method's proposal calls them exactly as before methods could be listed), the spec's prior."""
    opt, space = options.opt, options.space
    Yvar = history.Yvar_done.to(Y_done) if opt.known_noise and history.Yvar_done is not None else None
    mixed = space if space is not None and space.is_mixed else None
    categorical = {} if mixed is None else {"cat_dims": [mixed.method_dim]}
    return fit_models_with_prior(X_done, Y_done, Yvar, opt.prior_mean, batches=history.done_batches, ref_point=ref,
                                 **categorical)


def _checked_ref(options: LoopOptions, ref_point: Sequence[float] | None, m: int) -> Sequence[float] | None:
    """The reference point a proposal uses (the caller's, else the options', else the spec's; None: inferred), its
    length checked against the `m` objectives; the strategy checked too."""
    if options.opt.strategy not in ("mm-mo", "qnehvi", "random", "nsga2"):
        raise MmmoError(f"unknown optimizer strategy {options.opt.strategy!r}")
    ref = next((r for r in (ref_point, options.ref_point, options.opt.ref_point) if r is not None), None)
    if ref is not None and len(ref) != m:
        raise MmmoError(f"ref_point has {len(ref)} values but there are {m} objectives")
    return ref


def propose_next(
    options: LoopOptions,
    history: History,
    *,
    batch_index: int,
    slot: int,
    X_pending: Tensor,
    ref_point: Sequence[float] | None = None,
) -> Proposal:
    """One point, slot `slot` of batch `batch_index` (>= 1), for a worker that just freed (the asynchronous
    schedule): as `propose_batch`, but alone, with `X_pending [r, d]` (the trials being scored) as the acquisition's
    pending points, so nothing being scored is proposed again nor its outcome counted twice. The first
    `options.take_home_slots(batch_index)` slots of a batch go to the take-home target, the rest to the front. Seeded from
    `(opt.seed, batch_index, slot)`."""
    if batch_index < 1:
        raise MmmoError("the initial design is proposed whole, by propose_batch")
    opt, dim, space = options.opt, options.dim, options.space
    X_done, Y_done, X_seen = _arrays(options, history)
    seed = batch_seed(opt.seed, batch_index, slot)
    ref = _checked_ref(options, ref_point, Y_done.shape[-1])
    got: list[Proposal] = []
    if opt.strategy == "random":
        skip = opt.initial + (batch_index - 1) * opt.batch_size + slot
        got = _novel(_projected(sobol_points(1, dim, opt.seed, skip=skip), space), ["random"], X_seen, 1)
    elif opt.strategy == "nsga2":
        gens = list(history.done_batches or default_generations(X_done.shape[0], opt))
        got = _nsga2(X_done.cpu(), Y_done.cpu(), gens, X_seen, dim, seed, 1, space, population=opt.batch_size)
    elif X_done.shape[0] >= MIN_DONE_FOR_GP:
        gps = _fitted_gps(options, history, X_done, Y_done, ref)
        inp = BatchInputs(options, gps.model, X_done, Y_done, X_seen, ref, seed, X_pending=X_pending.to(X_done))
        home = slot < options.take_home_slots(batch_index)
        got = _take_home(inp, inp.target, 1) if home else _qnehvi(inp, 1) if opt.strategy == "qnehvi" else _mm_mo(inp, 1)
        got = [replace(p, prior=gps.prior.describe()) for p in got]
    return _top_up(got, 1, dim, X_seen, seed, space)[0]


def _projected(X: Tensor, space: SearchSpace | None) -> Tensor:
    """`X` projected onto `space`'s configurations (unchanged without a space, or for a single method's)."""
    return X if space is None else space.project(X)


@dataclass(frozen=True)
class BatchInputs:
    """What one Bayesian-optimisation batch is proposed from: the options, the fitted GPs and the history.

    `X_done [n, d]`/`Y_done [n, m]` are the successful trials, `X_seen [s, d]` every point ever proposed;
    `ref` is the run's reference point in raw units (None: inferred from `Y_done`).
    """

    options: LoopOptions
    model: ModelListGP
    X_done: Tensor
    Y_done: Tensor
    X_seen: Tensor
    ref: Sequence[float] | None
    seed: int
    X_pending: Tensor | None = None  # [r, d] points this batch already holds (the take-home part's)

    @property
    def opt(self) -> OptimizerSpec:
        return self.options.opt

    @property
    def budget(self) -> AcqBudget:
        return self.options.budget if self.options.budget is not None else DEFAULT_BUDGET

    @property
    def task_columns(self) -> list[int]:
        return self.options.task_columns

    @property
    def target(self) -> Target:
        """The take-home preference (by default the plain mean of the task objectives, unconstrained)."""
        return self.options.resolved_target

    @property
    def mixed(self) -> SearchSpace | None:
        """The space when the method is one of its coordinates; None otherwise."""
        space = self.options.space
        return space if space is not None and space.is_mixed else None

    @property
    def fixed_features_list(self) -> list[dict[int, float]] | None:
        """One dict of fixed coordinates per searched method of a mixed space; None otherwise."""
        if self.mixed is None:
            return None
        return [self.mixed.fixed_features(m) for m in self.mixed.searched_methods]


def acquire(inp: BatchInputs, n: int, pool: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`n` points `[k, d]` by hypervolume improvement, and a `[k]` mask of those taken from `pool [p, d]` (see
    `propose_hvi_pooled`); without a pool, exactly `propose_hvi`'s sequential greedy batch (mask all False)."""
    kind, seed, budget, Y = inp.opt.acquisition, inp.seed, inp.budget, inp.Y_done
    fixed: dict = {} if inp.mixed is None else {"fixed_features_list": inp.fixed_features_list}
    # the take-home target's constraints make the front's improvements count only where they are feasible
    if inp.target is not None and inp.target.constrained:
        fixed["constraints"] = inp.target.botorch_constraints()
    if inp.X_pending is not None and inp.X_pending.shape[0]:
        fixed["X_pending"] = inp.X_pending.to(inp.X_done)
    if pool is None or pool.shape[0] == 0:
        X = propose_hvi(inp.model, inp.X_done, inp.ref, n, kind=kind, seed=seed, budget=budget, Y_baseline=Y, **fixed)
        return X, torch.zeros(X.shape[0], dtype=torch.bool)
    return propose_hvi_pooled(
        inp.model, inp.X_done, inp.ref, n, pool, X_avoid=inp.X_seen, kind=kind, seed=seed, budget=budget, Y_baseline=Y,
        **fixed,
    )


def _bo_batch(inp: BatchInputs, k: int) -> list[Proposal]:
    """A BO batch: `k` points (at most `batch_size`) on the take-home target, then the rest by the strategy's
    front search, with the first part pending (never proposed twice, its outcome anticipated)."""
    opt, target = inp.opt, inp.target
    home = _take_home(inp, target, k) if target is not None and k else []
    if home:
        X_home = torch.tensor([p.x for p in home], dtype=torch.float64)
        inp = replace(inp, X_seen=torch.cat([inp.X_seen, X_home]), X_pending=X_home)
    n = opt.batch_size - len(home)
    if n == 0:
        return home
    return home + (_qnehvi(inp, n) if opt.strategy == "qnehvi" else _mm_mo(inp, n))


def _take_home(inp: BatchInputs, target: Target, k: int) -> list[Proposal]:
    """(At most) `k` new points by qLogNEI on `target`'s weighted mean, under its outcome constraints."""
    fixed = {} if inp.mixed is None else {"fixed_features_list": inp.fixed_features_list}
    X = propose_scalar(
        inp.model, inp.X_done, target.normalised_weights(inp.Y_done), k, constraints=target.botorch_constraints(),
        seed=inp.seed, budget=inp.budget, X_pending=inp.X_pending, **fixed,
    )
    return _novel(_projected(X, inp.mixed), ["take_home"] * X.shape[0], inp.X_seen, k)


def _qnehvi(inp: BatchInputs, n: int) -> list[Proposal]:
    X, _ = acquire(inp, n)
    return _novel(X, ["acquisition"] * X.shape[0], inp.X_seen, n)


def _mm_mo(inp: BatchInputs, n: int) -> list[Proposal]:
    """`n` points of the MM-MO batch: weak-to-strong offspring join the acquisition's pool, Fisher screening keeps
    the most informative of them; in `crossover` mode, the paper's steps 2-4 instead. Without offspring: qnehvi's."""
    opt, X_done, Y_done = inp.opt, inp.X_done, inp.Y_done
    w2s = opt.weak_to_strong
    if not w2s.enabled or X_done.shape[0] < MIN_DONE_FOR_W2S:
        return _qnehvi(inp, n)
    if w2s.mode == "crossover":
        return _mm_mo_crossover(inp, n)
    ref = resolve_ref_point(inp.model, X_done, inp.ref, Y_done)
    generator = torch.Generator().manual_seed(inp.seed)
    children = de_offspring(X_done, Y_done, ref, n=w2s.offspring, top_k=w2s.top_k, f=w2s.f, generator=generator)
    children = _projected(children, inp.mixed)
    offspring = children[novel_indices(children.cpu(), inp.X_seen)]
    if opt.fisher_screening and offspring.shape[0] > n:
        offspring = offspring[fisher_screen(inp.model, offspring, n, inp.X_seen.to(offspring))]
    X, from_pool = acquire(inp, n, offspring)
    steps = ["weak_to_strong" if pooled else "acquisition" for pooled in from_pool.tolist()]
    return _novel(X, steps, inp.X_seen, n)


def _mm_mo_crossover(inp: BatchInputs, n: int) -> list[Proposal]:
    """The paper's steps 2-4: propose `candidates` by HVI, cross DE mutants into them, Fisher screen to `n`."""
    opt, w2s = inp.opt, inp.opt.weak_to_strong
    X, _ = acquire(inp, opt.candidates)
    cols = inp.task_columns or list(range(inp.Y_done.shape[-1]))
    generator = torch.Generator().manual_seed(inp.seed)
    X, from_mutant = weak_to_strong(
        X, inp.X_done, inp.Y_done[:, cols], top_k=w2s.top_k, f=w2s.f, cr=w2s.cr, generator=generator
    )
    X = _projected(X, inp.mixed)
    steps = ["weak_to_strong" if m else "acquisition" for m in from_mutant.tolist()]
    if not opt.fisher_screening:
        return _novel(X, steps, inp.X_seen, n)
    keep = fisher_screen(inp.model, X, n, inp.X_seen.to(X)).tolist()
    return [Proposal(X[i].tolist(), steps[i]) for i in keep]


def _nsga2(
    X_done: Tensor, Y_done: Tensor, generations: Sequence[int], X_seen: Tensor, dim: int, seed: int, n: int,
    space: SearchSpace | None = None, population: int | None = None,
) -> list[Proposal]:
    """`n` NSGA-II children from a seeded study rebuilt from the history (one generation per batch, of
    `population` parents: `n` when None), projected onto a mixed `space`."""
    try:
        import optuna
    except ImportError:
        raise MmmoError("the nsga2 strategy needs Optuna: pip install 'optuna>=3.5'") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [f"x{i}" for i in range(dim)]
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        name: optuna.distributions.FloatDistribution(0.0, 1.0) for name in names
    }
    out: list[Proposal] = []
    # Optuna marks parts of its sampler API experimental from release to release (>= 3.5 is supported);
    # 5.0 flags none of those used here. Its deprecations stay visible.
    with expected_warnings((optuna.exceptions.ExperimentalWarning, "")):
        sampler = optuna.samplers.NSGAIISampler(population_size=max(population or n, 2), seed=seed)
        study = optuna.create_study(directions=["maximize"] * Y_done.shape[-1], sampler=sampler)
        gen_key = sampler._get_generation_key()
        for x, y, g in zip(X_done.tolist(), Y_done.tolist(), generations):
            study.add_trial(
                optuna.trial.create_trial(
                    params=dict(zip(names, x)), distributions=dists, values=y, system_attrs={gen_key: int(g)}
                )
            )
        avoid = X_seen
        # Children can copy a parent exactly; ask again (a bounded number of times) rather than repeat one.
        for _ in range(NSGA2_MAX_ASK_FACTOR * n):
            trial = study.ask(fixed_distributions=dists)
            # Close the trial so it never counts towards a generation's population.
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            x = _projected(torch.tensor([[trial.params[name] for name in names]], dtype=torch.float64), space)
            if novel_indices(x, avoid):
                out.append(Proposal(x[0].tolist(), "nsga2"))
                avoid = torch.cat([avoid, x])
                if len(out) == n:
                    break
    return out


def default_generations(n_done: int, opt: OptimizerSpec) -> list[int]:
    """Batch index of each done trial when none is given: `opt.initial` in batch 0, then `batch_size` each."""
    return [0 if i < opt.initial else 1 + (i - opt.initial) // opt.batch_size for i in range(n_done)]
