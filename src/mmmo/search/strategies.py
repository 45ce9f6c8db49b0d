"""Batch proposal strategies: mm-mo (the paper's four steps), qnehvi, random and nsga2.

Every strategy is stateless: a batch is a pure function of the spec, the history and the batch index
(every RNG is seeded from `(opt.seed, batch_index)`), which is what makes runs resumable and repeatable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.quasirandom import SobolEngine

from mmmo.config import OptimizerSpec
from mmmo.errors import MmmoError
from mmmo.quiet import expected_warnings
from mmmo.search.acquisition import MAXITER, MC_SAMPLES, NUM_RESTARTS, RAW_SAMPLES, propose_hvi
from mmmo.search.fisher import DEDUPE_TOL, fisher_screen
from mmmo.search.gp import fit_models
from mmmo.search.weak_to_strong import weak_to_strong

log = logging.getLogger(__name__)

MIN_DONE_FOR_GP = 2
MIN_DONE_FOR_W2S = 3
NSGA2_MAX_ASK_FACTOR = 4


@dataclass(frozen=True)
class AcqBudget:
    """How hard to optimise the acquisition (restarts, raw samples, MC samples, L-BFGS iterations)."""

    num_restarts: int = NUM_RESTARTS
    raw_samples: int = RAW_SAMPLES
    mc_samples: int = MC_SAMPLES
    maxiter: int = MAXITER


DEFAULT_BUDGET = AcqBudget()


def budget_for(n_objectives: int) -> AcqBudget:
    """An acquisition budget whose cost stays small beside an evaluation.

    qLogNEHVI partitions the objective space once per MC sample, and that partitioning grows steeply with
    the number of objectives: with 4 objectives and 128 samples one batch of 10 proposals took over 2 min
    on 2 CPU cores against ~20 s with 32 samples (benchmarks/overhead.py measures it).
    """
    mc = MC_SAMPLES if n_objectives <= 2 else (64 if n_objectives == 3 else 32)
    return AcqBudget(num_restarts=4, raw_samples=128, mc_samples=mc, maxiter=100)


@dataclass
class Proposal:
    """A point to evaluate, in the unit cube, and the step that proposed it."""

    x: list[float]
    step: str


def batch_seed(seed: int, batch_index: int) -> int:
    """A 31-bit seed mixed from the run seed and the batch index."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0] & 0x7FFFFFFF)


def sobol_points(n: int, dim: int, seed: int, skip: int = 0) -> Tensor:
    """`n` points of the scrambled Sobol sequence seeded by `seed`, after skipping the first `skip`."""
    engine = SobolEngine(dim, scramble=True, seed=seed)
    if skip:
        engine.fast_forward(skip)
    return engine.draw(n, dtype=torch.float64)


def initial_design(n: int, dim: int, seed: int) -> Tensor:
    """The initial design `[n, dim]`: the first `n` points of a seeded scrambled Sobol sequence."""
    return sobol_points(n, dim, seed)


def novel_indices(X: Tensor, X_seen: Tensor, tol: float = DEDUPE_TOL) -> list[int]:
    """Indices of rows of `X` farther than `tol` (max-norm) from `X_seen` and from earlier kept rows."""
    kept: list[int] = []
    avoid = X_seen.to(X)
    for i in range(X.shape[0]):
        if avoid.shape[0] == 0 or bool(((avoid - X[i]).abs().amax(-1) > tol).all()):
            kept.append(i)
            avoid = torch.cat([avoid, X[i : i + 1]])
    return kept


def _top_up(proposals: list[Proposal], n: int, dim: int, X_seen: Tensor, seed: int) -> list[Proposal]:
    """Fill `proposals` up to `n` with seeded Sobol points that are new."""
    if len(proposals) >= n:
        return proposals[:n]
    kept = torch.tensor([p.x for p in proposals], dtype=torch.float64).reshape(-1, dim)
    avoid = torch.cat([X_seen.to(torch.float64).cpu(), kept])
    engine = SobolEngine(dim, scramble=True, seed=seed)
    out = list(proposals)
    for _ in range(64):
        chunk = engine.draw(max(2 * (n - len(out)), 8), dtype=torch.float64)
        for i in novel_indices(chunk, avoid):
            out.append(Proposal(chunk[i].tolist(), "sobol"))
            avoid = torch.cat([avoid, chunk[i : i + 1]])
            if len(out) == n:
                return out
    raise MmmoError(f"could not find {n} new points in a {dim}-dimensional unit cube")


def _novel(X: Tensor, steps: Sequence[str], X_seen: Tensor, limit: int) -> list[Proposal]:
    return [Proposal(X[i].tolist(), steps[i]) for i in novel_indices(X.cpu(), X_seen.cpu())[:limit]]


def propose_batch(
    opt: OptimizerSpec,
    *,
    X_done: Tensor,
    Y_done: Tensor,
    X_all_seen: Tensor,
    task_columns: list[int],
    batch_index: int,
    dim: int,
    ref_point: Sequence[float] | None = None,
    done_batches: Sequence[int] | None = None,
    budget: AcqBudget | None = None,
    device: torch.device | str | None = None,
) -> list[Proposal]:
    """The next batch: `opt.initial` Sobol points for batch 0, else `opt.batch_size` points from `opt.strategy`.

    `X_done`/`Y_done` hold only successful trials (all objectives, maximised); `X_all_seen` holds every
    point ever proposed, failed ones included, none of which is proposed again. `ref_point` (raw units)
    defaults to `opt.ref_point`, else it is inferred from `Y_done` for the acquisition. `done_batches`
    (the batch of each done trial) sets NSGA-II's generations; None assumes full batches in order.
    `budget` defaults to the module's DEFAULT_BUDGET, read at call time.
    """
    budget = budget if budget is not None else DEFAULT_BUDGET
    dev = torch.device(device) if device is not None else X_done.device
    X_done = X_done.to(dev, torch.float64).reshape(-1, dim)
    Y_done = Y_done.to(dev, torch.float64)
    X_seen = X_all_seen.to(torch.float64).reshape(-1, dim).cpu()
    seed = batch_seed(opt.seed, batch_index)
    ref = ref_point if ref_point is not None else opt.ref_point
    if ref is not None and len(ref) != Y_done.shape[-1]:
        raise MmmoError(f"ref_point has {len(ref)} values but there are {Y_done.shape[-1]} objectives")

    if batch_index == 0:
        X0 = initial_design(opt.initial, dim, opt.seed)
        got = _novel(X0, ["sobol"] * X0.shape[0], X_seen, opt.initial)
        return _top_up(got, opt.initial, dim, X_seen, seed)

    n = opt.batch_size
    if opt.strategy == "random":
        X = sobol_points(n, dim, opt.seed, skip=opt.initial + (batch_index - 1) * n)
        got = _novel(X, ["random"] * n, X_seen, n)
    elif opt.strategy == "nsga2":
        gens = list(done_batches) if done_batches is not None else default_generations(X_done.shape[0], opt)
        got = _nsga2(X_done.cpu(), Y_done.cpu(), gens, X_seen, dim, seed, n)
    elif X_done.shape[0] < MIN_DONE_FOR_GP:
        log.info("batch %d: only %d successful trials, proposing Sobol points", batch_index, X_done.shape[0])
        got = []
    elif opt.strategy == "qnehvi":
        model = fit_models(X_done, Y_done)
        X = _acquire(model, X_done, Y_done, ref, n, opt, seed, budget)
        got = _novel(X, ["acquisition"] * n, X_seen, n)
    elif opt.strategy == "mm-mo":
        got = _mm_mo(opt, X_done, Y_done, X_seen, task_columns, ref, seed, budget)
    else:
        raise MmmoError(f"unknown optimizer strategy {opt.strategy!r}")
    return _top_up(got, n, dim, X_seen, seed)


def _acquire(
    model: object,
    X_done: Tensor,
    Y_done: Tensor,
    ref: Sequence[float] | None,
    n: int,
    opt: OptimizerSpec,
    seed: int,
    budget: AcqBudget,
) -> Tensor:
    return propose_hvi(
        model,  # type: ignore[arg-type]
        X_done,
        ref,
        n,
        kind=opt.acquisition,
        seed=seed,
        num_restarts=budget.num_restarts,
        raw_samples=budget.raw_samples,
        mc_samples=budget.mc_samples,
        maxiter=budget.maxiter,
        Y_baseline=Y_done,
    )


def _mm_mo(
    opt: OptimizerSpec,
    X_done: Tensor,
    Y_done: Tensor,
    X_seen: Tensor,
    task_columns: list[int],
    ref: Sequence[float] | None,
    seed: int,
    budget: AcqBudget,
) -> list[Proposal]:
    """Steps 1-4: fit, propose `candidates` by HVI, weak-to-strong crossover, Fisher screen to `batch_size`."""
    model = fit_models(X_done, Y_done)
    X = _acquire(model, X_done, Y_done, ref, opt.candidates, opt, seed, budget)
    steps = ["acquisition"] * X.shape[0]
    w2s = opt.weak_to_strong
    if w2s.enabled and X_done.shape[0] >= MIN_DONE_FOR_W2S:
        cols = task_columns or list(range(Y_done.shape[-1]))
        generator = torch.Generator().manual_seed(seed)
        X, from_mutant = weak_to_strong(
            X, X_done, Y_done[:, cols], top_k=w2s.top_k, f=w2s.f, cr=w2s.cr, generator=generator
        )
        steps = ["weak_to_strong" if m else "acquisition" for m in from_mutant.tolist()]
    if not opt.fisher_screening:
        return _novel(X, steps, X_seen, opt.batch_size)
    keep = fisher_screen(model, X, opt.batch_size, X_seen.to(X)).tolist()
    return [Proposal(X[i].tolist(), steps[i]) for i in keep]


def _nsga2(
    X_done: Tensor, Y_done: Tensor, generations: Sequence[int], X_seen: Tensor, dim: int, seed: int, n: int
) -> list[Proposal]:
    """NSGA-II children from a seeded study rebuilt from the history (one generation per batch)."""
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
        sampler = optuna.samplers.NSGAIISampler(population_size=max(n, 2), seed=seed)
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
            x = torch.tensor([[trial.params[name] for name in names]], dtype=torch.float64)
            if novel_indices(x, avoid):
                out.append(Proposal(x[0].tolist(), "nsga2"))
                avoid = torch.cat([avoid, x])
                if len(out) == n:
                    break
    return out


def default_generations(n_done: int, opt: OptimizerSpec) -> list[int]:
    """Batch index of each done trial when none is given: `opt.initial` in batch 0, then `batch_size` each."""
    return [0 if i < opt.initial else 1 + (i - opt.initial) // opt.batch_size for i in range(n_done)]
