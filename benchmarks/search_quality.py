"""Search quality: mm-mo against qnehvi, random, nsga2, CMA-ES, the standard recipe and the authors' code.

Plus mm-mo ablations, each at the same budget per problem.

    .venv/bin/python benchmarks/search_quality.py --problem demo                  # every strategy, default seeds
    .venv/bin/python benchmarks/search_quality.py --problem dtlz2-noisy --strategies "mm-mo,qnehvi"
    .venv/bin/python benchmarks/search_quality.py --problem all --report-only     # every stored problem's table
    .venv/bin/python benchmarks/search_quality.py --problem demo --build-table 512          # (re)build a table
    .venv/bin/python benchmarks/search_quality.py --problem demo-layers3 --build-table 512
    .venv/bin/python benchmarks/search_quality.py --problem demo-layers6 --build-table 512  # builds a 6-layer demo
    .venv/bin/python benchmarks/search_quality.py --problem demo --smoke          # tiny budget, results in /tmp

Problems (issue 14), each with its own budget, results file `benchmarks/data/search_quality_<problem>.json`
and plot `.png`:

- `demo`: a cached table of evaluated demo merges (benchmarks/data/demo_table.json: Sobol points of the demo's
  6-D space, scored by `CandidateEvaluator`), interpolated by a GP posterior mean fitted once, so every
  strategy sees the same deterministic, smooth objective (3 task scores + sparsity).
- `demo-noisy`: the same surrogate, but each task score the optimizer sees is Binomial(50, p) / 50 with p the
  surrogate's value, with lm-eval's standard error sqrt(p^(1 - p^) / (n - 1)); sparsity stays exact.
- `demo-layers3`: the demo with `granularity: layers:3` (18-D), from its own table demo_table_layers3.json.
- `demo-layers6`: a 6-layer demo (the default calibration with `layers=6`, built in .cache/demo-layers6) with
  `granularity: layers:6` (36-D), from demo_table_layers6.json.
- `demo-constrained`: the `demo` surrogate, with the take-home constraint "every task at least the base
  model's score" (the base scored once on the same documents: benchmarks/data/demo_base_scores.json); a
  library strategy is told that target (`LoopOptions.target`) where the loop takes one.
- `demo-real`: the real demo, every point merged and scored (slow).
- `branincurrin`, `dtlz2` (BoTorch's test functions, negated so they are maximised) and their `-noisy`
  variants (Gaussian noise, its standard deviation told to the optimizer as the standard error).

On noisy problems the optimizer sees noisy values; every score here (hypervolume, best mean task score) uses
the TRUE noise-free values of the points it evaluated. Both are stored in the results JSON.
All runs of a problem are scored against ONE fixed reference point (a table's nadir minus 10% of its range;
a test function's own `ref_point`), so hypervolumes are comparable across strategies and seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HOME", str(REPO / ".cache" / "hf_home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402  (after the environment is set)

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_DEMO_DIR = REPO / ".cache" / "demo-test"  # the test suite's demo build
DEMO_OBJECTIVES = ["arith", "reverse", "sort", "sparsity"]
DEMO_TASKS = ["arith", "reverse", "sort"]
DEMO_EXAMPLES = 50  # examples per task: the demo's `limit`, and the noisy demo's binomial n
REACH_FRACTION = 0.95
SMOKE_OUT = Path("/tmp")


# Layer groups -> the demo model's layer count, where the default demo (3 layers) has too few for them.
DEMO_MODEL_LAYERS = {6: 6}


def table_path(layer_groups: int) -> Path:
    return DATA / ("demo_table.json" if layer_groups == 1 else f"demo_table_layers{layer_groups}.json")


def demo_params(layer_groups: int) -> Any:
    """The demo calibration a table with `layer_groups` groups is built from: the default demo, or the same
    calibration with more layers (`DEMO_MODEL_LAYERS`)."""
    from mmmo.demo import DEFAULT_PARAMS

    layers = DEMO_MODEL_LAYERS.get(layer_groups)
    return DEFAULT_PARAMS if layers is None else replace(DEFAULT_PARAMS, layers=layers)


def demo_dir_for(layer_groups: int, demo_dir: Path | None = None) -> Path:
    """Where the demo of `layer_groups` is built: `demo_dir` if given, else the test suite's demo build, or
    `.cache/demo-layers<L>` for a demo with more layers."""
    if demo_dir is not None:
        return demo_dir
    layers = DEMO_MODEL_LAYERS.get(layer_groups)
    return DEFAULT_DEMO_DIR if layers is None else REPO / ".cache" / f"demo-layers{layers}"


# ------------------------------------------------------------------------------------------ the demo problem


def demo_search_spec(demo_dir: Path, limit: int, layer_groups: int = 1) -> Any:
    """The demo's search spec (3 experts, dare_ties weight + density, 3 tasks + sparsity) on CPU."""
    from mmmo.demo import build_demo
    from mmmo.spec.schema import spec_from_dict
    from mmmo.testing import search_spec_for

    demo = build_demo(demo_dir, params=demo_params(layer_groups))
    merge = {"granularity": f"layers:{layer_groups}"} if layer_groups > 1 else {}
    data = search_spec_for(
        demo,
        limit=limit,
        merge=merge,
        evaluation={"device": "cpu", "batch_size": 64, "evaluate_sources": False},
        output={"dir": "/tmp/mmmo-bench-unused", "export": "none"},
    )
    return spec_from_dict(data, demo.root)


def demo_space(layer_groups: int) -> Any:
    """The demo's search space without building the spec (what `SearchSpace.from_spec(demo_search_spec(...))`
    gives; `build_table` checks that, and `load_table` checks the dimension names against the table's)."""
    from mmmo.search.space import SearchSpace

    return SearchSpace(model_names=("arith", "reverse", "sort"), layer_groups=layer_groups,
                       weight_bounds=(0.0, 1.0), density_bounds=(0.1, 1.0))


def _demo_digest(layer_groups: int = 1) -> str:
    """The digest of the demo calibration the table of `layer_groups` is built from."""
    return demo_params(layer_groups).digest()


def build_table(demo_dir: Path, n: int, limit: int, out: Path, seed: int = 1234, layer_groups: int = 1) -> None:
    """Evaluate `n` scrambled Sobol points of the demo space (`layer_groups` per-layer-group weights) and write
    them (incrementally) as JSON."""
    from mmmo.evaluation.evaluator import CandidateEvaluator
    from mmmo.run.records import Trial
    from mmmo.search.space import SearchSpace
    from mmmo.search.strategies import sobol_points

    spec = demo_search_spec(demo_dir, limit, layer_groups=layer_groups)
    if SearchSpace.from_spec(spec).names != demo_space(layer_groups).names:  # the coordinates the table stores
        sys.exit(f"the demo spec's search space {SearchSpace.from_spec(spec)} is not demo_space({layer_groups}) "
                 f"{demo_space(layer_groups)}: update demo_space")
    ev = CandidateEvaluator.from_spec(spec, device="cpu")
    X = sobol_points(n, ev.space.dim, seed)
    rows: list[dict[str, Any]] = []
    seconds0 = 0.0
    if out.is_file():
        old = json.loads(out.read_text())
        if (old.get("seed") == seed and old.get("limit") == limit and old.get("demo") == _demo_digest(layer_groups)
                and old.get("layer_groups", 1) == layer_groups and old.get("dim") == ev.space.dim):
            rows, seconds0 = old["rows"], old.get("seconds", 0.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(len(rows), n):
        t = ev.evaluate(Trial(id=i, batch=0, x=X[i].tolist(), step="sobol"))
        if t.status != "done":
            print(f"point {i} failed: {t.error}", file=sys.stderr)
            continue
        rows.append({"x": [round(v, 6) for v in t.x], "y": [round(t.objectives[k], 6) for k in DEMO_OBJECTIVES]})
        if len(rows) % 8 == 0 or i == n - 1:
            meta = {"objectives": DEMO_OBJECTIVES, "limit": limit, "seed": seed, "demo": _demo_digest(layer_groups),
                    "layer_groups": layer_groups, "dim": ev.space.dim, "names": ev.space.names,
                    "seconds": round(time.perf_counter() - t0 + seconds0, 1), "rows": rows}
            out.write_text(json.dumps(meta, separators=(",", ":")))
            print(f"{len(rows)}/{n} points, {(time.perf_counter() - t0) / max(len(rows), 1):.1f} s/point",
                  flush=True)


# ------------------------------------------------------------------------------------------------ problems


@dataclass
class Budget:
    initial: int = 10
    batches: int = 4
    batch_size: int = 5
    candidates: int = 10

    @property
    def total(self) -> int:
        return self.initial + self.batches * self.batch_size


SMOKE_BUDGET = Budget(initial=6, batches=2, batch_size=3, candidates=6)

# Noise model: (true values [n, m], generator) -> (the values the optimizer sees [n, m], their stderrs [n, m]).
Noise = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Problem:
    """A multi-objective (maximised) black box on the unit cube, with the fixed reference point for scoring."""

    name: str
    dim: int
    objectives: list[str]
    tasks: list[str]  # the objectives whose mean is the "mean task score" (and CMA-ES's scalar)
    evaluate: Callable[[torch.Tensor], torch.Tensor]  # [n, dim] -> TRUE values [n, m], objectives order
    ref_point: list[float]
    budget: Budget
    layer_groups: int | None = None  # a demo merge space (it has standard recipes); None: a test function
    noise: Noise | None = None
    n_examples: int | None = None  # examples behind each task score (binomial noise), told to the optimizer
    exact: list[str] = field(default_factory=list)  # objectives told to the optimizer as exact (stderr 0.0)
    info: dict[str, Any] = field(default_factory=dict)  # what identifies the problem's data in the results key
    minimums: dict[str, float] = field(default_factory=dict)  # outcome constraints: objective -> lowest allowed

    @property
    def noisy(self) -> bool:
        return self.noise is not None

    def target(self) -> Any:
        """The take-home `Target`: the mean of the task objectives, subject to `minimums`."""
        from mmmo.search.target import Target

        cols = [self.objectives.index(n) for n in self.tasks]
        mins = tuple((self.objectives.index(n), v) for n, v in self.minimums.items())
        return Target(Target.mean_of(len(self.objectives), cols).weights, mins)

    def recipes(self) -> torch.Tensor | None:
        """The standard recipe point(s) `[k, dim]` of a demo merge space; None for a test function."""
        if self.layer_groups is None:
            return None
        from mmmo.search.space import standard_recipes

        return standard_recipes(demo_space(self.layer_groups)).to(torch.float64)


def load_table(path: Path, layer_groups: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A cached table as `X [n, dim]`, `Y [n, 4]` (float64), and its metadata (without the rows)."""
    if not path.is_file():
        problem = "demo" if layer_groups == 1 else f"demo-layers{layer_groups}"
        sys.exit(f"no surrogate table at {path}: build it with --problem {problem} --build-table 512")
    data = json.loads(path.read_text())
    if data.get("demo") != _demo_digest(layer_groups):
        print(f"warning: {path} was built from another demo calibration; rebuild it with --build-table",
              file=sys.stderr)
    if data.get("names") != demo_space(layer_groups).names:
        sys.exit(f"{path}: its dimensions {data.get('names')} are not the demo space's "
                 f"{demo_space(layer_groups).names}")
    X = torch.tensor([r["x"] for r in data["rows"]], dtype=torch.float64)
    Y = torch.tensor([r["y"] for r in data["rows"]], dtype=torch.float64)
    meta = {k: v for k, v in data.items() if k != "rows"}
    return X, Y, meta


def fixed_ref_point(Y_table: torch.Tensor) -> list[float]:
    """One reference point for every strategy and seed: the table's nadir minus 10% of its range."""
    from mmmo.search.pareto import infer_ref_point

    return infer_ref_point(Y_table).tolist()


def binomial_noise(n: int, task_cols: list[int]) -> Noise:
    """Task scores drawn Binomial(n, p) / n, p the true value clamped to [0, 1], with lm-eval's stderr
    sqrt(p^(1 - p^) / (n - 1)); the other columns exact (stderr 0)."""

    def noise(Y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        Y_obs = Y.clone()
        p = Y[:, task_cols].clamp(0.0, 1.0)
        Y_obs[:, task_cols] = torch.binomial(torch.full_like(p, float(n)), p, generator=generator) / n
        return Y_obs, binomial_stderr(Y_obs, n, task_cols)

    return noise


def binomial_stderr(Y_obs: torch.Tensor, n: int, task_cols: list[int]) -> torch.Tensor:
    """`[k, m]` stderrs of observed binomial task scores `Y_obs [k, m]` (lm-eval's sqrt(p^(1 - p^) / (n - 1)) on
    `task_cols`, 0 elsewhere): what the optimizer was told, recomputed from what it saw."""
    S = torch.zeros_like(Y_obs)
    phat = Y_obs[:, task_cols]
    S[:, task_cols] = (phat * (1 - phat) / (n - 1)).sqrt()
    return S


def gaussian_noise(std: Sequence[float]) -> Noise:
    """Additive Gaussian noise of standard deviation `std` per objective, told to the optimizer as its stderr."""

    def noise(Y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.tensor(list(std), dtype=Y.dtype).expand_as(Y)
        eps = torch.randn(Y.shape, generator=generator, dtype=Y.dtype)
        return Y + s * eps, s.clone()

    return noise


def surrogate_problem(name: str, layer_groups: int, budget: Budget, noisy: bool = False) -> Problem:
    """A table interpolated by a GP posterior mean (fitted once), clamped to the table's range per objective."""
    from mmmo.search.gp import fit_models

    path = table_path(layer_groups)
    X_t, Y_t, meta = load_table(path, layer_groups)
    torch.manual_seed(0)
    # The problem itself: BoTorch's fitted mean interpolates the table, whatever prior the searches use.
    model = fit_models(X_t, Y_t, prior_mean="fitted")
    lo, hi = Y_t.min(0).values, Y_t.max(0).values

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean = model.posterior(X.to(torch.float64).reshape(-1, X_t.shape[1])).mean
        return torch.maximum(torch.minimum(mean, hi), lo)

    rows = hashlib.sha256(json.dumps(Y_t.tolist()).encode()).hexdigest()[:16]
    return Problem(
        name=name, dim=X_t.shape[1], objectives=list(DEMO_OBJECTIVES), tasks=list(DEMO_TASKS), evaluate=evaluate,
        ref_point=fixed_ref_point(Y_t), budget=budget, layer_groups=layer_groups,
        noise=binomial_noise(DEMO_EXAMPLES, [0, 1, 2]) if noisy else None,
        n_examples=DEMO_EXAMPLES if noisy else None, exact=["sparsity"],
        info={"table": path.name, "table_rows": Y_t.shape[0], "table_digest": rows, "surrogate_prior": "fitted"},
    )


def demo_base_scores(demo_dir: Path, limit: int) -> dict[str, float]:
    """The demo base model's objectives (unmerged, scored by `CandidateEvaluator` on the table's documents),
    cached in benchmarks/data/demo_base_scores.json with the demo's digest and `limit`."""
    path = DATA / "demo_base_scores.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("demo") == _demo_digest() and data.get("limit") == limit:
            return data["objectives"]
    from mmmo.evaluation.evaluator import CandidateEvaluator

    score = CandidateEvaluator.from_spec(demo_search_spec(demo_dir, limit), device="cpu").evaluate_source(None)
    if score.objectives is None:
        sys.exit(f"scoring the demo base model failed: {score.error}")
    data = {"demo": _demo_digest(), "limit": limit, "objectives": score.objectives, "stderr": score.stderr}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return score.objectives


def demo_real_problem(demo_dir: Path, limit: int, budget: Budget) -> Problem:
    """The real demo: every point is merged and scored by `CandidateEvaluator` (slow)."""
    from mmmo.evaluation.evaluator import CandidateEvaluator
    from mmmo.run.records import Trial

    ev = CandidateEvaluator.from_spec(demo_search_spec(demo_dir, limit), device="cpu")
    _, Y_t, _ = load_table(table_path(1))

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        rows = []
        for x in X.tolist():
            t = ev.evaluate(Trial(id=0, batch=0, x=x, step="bench"))
            rows.append([t.objectives[k] for k in DEMO_OBJECTIVES] if t.status == "done" else [math.nan] * 4)
        return torch.tensor(rows, dtype=torch.float64)

    return Problem(name="demo-real", dim=ev.space.dim, objectives=list(DEMO_OBJECTIVES), tasks=list(DEMO_TASKS),
                   evaluate=evaluate, ref_point=fixed_ref_point(Y_t), budget=budget, layer_groups=1,
                   exact=["sparsity"], info={"demo": _demo_digest(), "limit": limit})


def test_function_problem(name: str, fn: Any, budget: Budget, noise_std: Sequence[float] | None) -> Problem:
    """A BoTorch multi-objective test function (built with negate=True: maximised) on its unit-cube domain."""
    names = [f"f{i}" for i in range(fn.num_objectives)]
    if not (bool((fn.bounds[0] == 0).all()) and bool((fn.bounds[1] == 1).all())):
        raise SystemExit(f"{name}: the test function's domain is not the unit cube")

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(X.to(torch.float64).reshape(-1, fn.dim), noise=False)  # forward applies `negate`

    info: dict[str, Any] = {"function": type(fn).__name__, "dim": fn.dim}
    if noise_std is not None:
        info["noise_std"] = list(noise_std)
    return Problem(name=name, dim=fn.dim, objectives=names, tasks=list(names), evaluate=evaluate,
                   ref_point=[float(v) for v in fn.ref_point], budget=budget,
                   noise=gaussian_noise(noise_std) if noise_std is not None else None, info=info)


BRANINCURRIN_NOISE = [15.19, 0.63]  # the BoTorch multi-objective tutorial's noise levels
DTLZ2_NOISE = [0.1] * 4
PROBLEM_BUDGETS = {
    "demo": Budget(10, 4, 5, 10),
    "demo-noisy": Budget(10, 4, 5, 10),
    "demo-layers3": Budget(10, 10, 5, 10),
    "demo-layers6": Budget(10, 10, 5, 10),
    "demo-constrained": Budget(10, 4, 5, 10),
    "demo-real": Budget(10, 4, 5, 10),
    "branincurrin": Budget(10, 4, 5, 10),
    "branincurrin-noisy": Budget(10, 4, 5, 10),
    "dtlz2": Budget(10, 6, 5, 10),
    "dtlz2-noisy": Budget(10, 6, 5, 10),
}
PROBLEMS = list(PROBLEM_BUDGETS)


def make_problem(name: str, budget: Budget, demo_dir: Path, limit: int) -> Problem:
    if name == "demo":
        return surrogate_problem(name, 1, budget)
    if name == "demo-noisy":
        return surrogate_problem(name, 1, budget, noisy=True)
    if name in ("demo-layers3", "demo-layers6"):
        return surrogate_problem(name, int(name.removeprefix("demo-layers")), budget)
    if name == "demo-constrained":  # every task at least the base model's score on the same documents
        mins = {k: v for k, v in demo_base_scores(demo_dir, limit).items() if k in DEMO_TASKS}
        problem = surrogate_problem(name, 1, budget)
        return replace(problem, minimums=mins, info={**problem.info, "minimums": mins})
    if name == "demo-real":
        return demo_real_problem(demo_dir, limit, budget)
    from botorch.test_functions.multi_objective import DTLZ2, BraninCurrin

    if name.startswith("branincurrin"):
        noise = BRANINCURRIN_NOISE if name.endswith("-noisy") else None
        return test_function_problem(name, BraninCurrin(negate=True).to(torch.float64), budget, noise)
    if name.startswith("dtlz2"):
        noise = DTLZ2_NOISE if name.endswith("-noisy") else None
        return test_function_problem(name, DTLZ2(dim=6, num_objectives=4, negate=True).to(torch.float64), budget,
                                     noise)
    raise SystemExit(f"unknown problem {name!r}; choose from {PROBLEMS}")


class Recorder:
    """One run's evaluations: every point, its true and observed values, and the time spent evaluating."""

    def __init__(self, problem: Problem, seed: int) -> None:
        self.problem = problem
        self.generator = torch.Generator().manual_seed(1_000_003 * (seed + 1))  # the run's noise stream
        self.xs: list[list[float]] = []
        self.ys: list[list[float]] = []  # true values
        self.ys_obs: list[list[float]] = []  # what the optimizer saw
        self.seconds = 0.0

    def __call__(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Evaluate `X [n, dim]`: the observed values `[n, m]` and their stderrs (None when noise-free)."""
        t0 = time.perf_counter()
        X = X.to(torch.float64).reshape(-1, self.problem.dim)
        Y = self.problem.evaluate(X)
        Y_obs, S = (Y, None) if self.problem.noise is None else self.problem.noise(Y, self.generator)
        self.xs += X.tolist()
        self.ys += Y.tolist()
        self.ys_obs += Y_obs.tolist()
        self.seconds += time.perf_counter() - t0
        return Y_obs, S

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"x": self.xs, "y": self.ys, "eval_seconds": self.seconds}
        if self.problem.noisy:
            out["y_obs"] = self.ys_obs
        return out


# ------------------------------------------------------------------------------------------------ strategies

# OptimizerSpec overrides of the strategies run through `run_loop` ("_objectives": optimise only those).
# The ablation of weak-to-strong, Fisher screening and known noise ran with the fitted prior mean (BoTorch's).
ALL_STEPS = {"weak_to_strong": {"enabled": True, "mode": "pool"}, "fisher_screening": True, "known_noise": True,
             "prior_mean": "fitted"}
LOOP_STRATEGIES: dict[str, dict[str, Any]] = {
    "mm-mo": {},  # the library's defaults
    "qnehvi": {"strategy": "qnehvi", "prior_mean": "fitted"},  # BoTorch's qLogNEHVI on BoTorch's default GPs
    "random": {"strategy": "random"},
    "nsga2": {"strategy": "nsga2"},
    # The ablation, relative to mm-mo with every step on (pool weak-to-strong, Fisher screening, known noise),
    # named by what it changes, so the names keep their meaning whatever the library's defaults are.
    "mm-mo all steps": ALL_STEPS,
    "all steps -w2s": {**ALL_STEPS, "weak_to_strong": {"enabled": False}},
    "all steps -fisher": {**ALL_STEPS, "fisher_screening": False},
    "all steps -noise": {**ALL_STEPS, "known_noise": False},
    "mm-mo crossover": {**ALL_STEPS, "weak_to_strong": {"enabled": True, "mode": "crossover"}},
    "mm-mo -w2s -fisher -prior": {"weak_to_strong": {"enabled": False}, "fisher_screening": False,
                                  "prior_mean": "fitted"},  # = qnehvi
    "mm-mo worst prior": {"prior_mean": "worst"},  # the prior pinned in every batch, not only where it matters
    "mm-mo -sparsity": {"_objectives": DEMO_TASKS},  # demo problems only; not in the default set
    # Points of each batch on the take-home target (the rest on the front); 0 is the front-only search.
    "mm-mo take-home 0": {"take_home_points": 0},
    "mm-mo take-home 1": {"take_home_points": 1},
    "mm-mo take-home 2": {"take_home_points": 2},
    "mm-mo take-home 3": {"take_home_points": 3},
}
ALL_STRATEGIES = ["mm-mo", "qnehvi", "random", "nsga2", "cma-es", "standard recipe", "authors' code",
                  "mm-mo all steps", "all steps -w2s", "all steps -fisher", "all steps -noise", "mm-mo crossover",
                  "mm-mo -w2s -fisher -prior", "mm-mo worst prior", "mm-mo -sparsity", "mm-mo take-home 0",
                  "mm-mo take-home 1", "mm-mo take-home 2", "mm-mo take-home 3"]
DEFAULT_STRATEGIES = [s for s in ALL_STRATEGIES if s != "mm-mo -sparsity" and not s.startswith("mm-mo take-home")]
DEMO_ONLY = {"standard recipe", "mm-mo -sparsity"}


def is_bo(name: str) -> bool:
    """The GP-acquisition strategies (run for --bo-seeds seeds; the rest for --seeds)."""
    return name == "qnehvi" or name.startswith(("mm-mo", "all steps"))


def loop_spec(name: str, problem: Problem, budget: Budget, seed: int) -> tuple[Any, list[str]]:
    """The `OptimizerSpec` a loop strategy runs with, and the objectives it optimises."""
    from mmmo.spec.schema import OptimizerSpec

    cfg = dict(LOOP_STRATEGIES[name])
    objective_names = list(cfg.pop("_objectives", problem.objectives))
    if problem.recipes() is None:
        cfg["standard_recipes"] = False
    opt = OptimizerSpec(initial=budget.initial, batches=budget.batches, candidates=budget.candidates,
                        batch_size=budget.batch_size, seed=seed, **cfg)
    return opt, objective_names


def spec_id(name: str, problem: Problem, budget: Budget, seed: int) -> str | None:
    """What determines a loop strategy's run (its full OptimizerSpec and objectives); None for the others.

    Two strategies with the same id at the same seed make the same run (a batch is a pure function of the
    spec, the history and the batch index), e.g. `mm-mo +w2s` and `mm-mo` while the library enables
    weak-to-strong by default: the second is copied from the first instead of being run again.
    """
    if name not in LOOP_STRATEGIES:
        return None
    opt, objective_names = loop_spec(name, problem, budget, seed)
    return json.dumps({"opt": opt.model_dump(mode="json"), "objectives": objective_names}, sort_keys=True)


def run_loop_strategy(name: str, problem: Problem, budget: Budget, seed: int, rec: Recorder) -> dict[str, Any]:
    """One run of a `run_loop` strategy."""
    from mmmo.run.records import Trial
    from mmmo.search.acquisition import budget_for
    from mmmo.search.loop import BatchSummary, LoopOptions, NullObserver, run_loop

    opt, objective_names = loop_spec(name, problem, budget, seed)
    recipes = problem.recipes()
    cols = [problem.objectives.index(n) for n in objective_names]
    propose: list[float] = []
    steps: list[str] = []  # which step proposed each point (sobol, standard, acquisition, weak_to_strong, ...)

    def evaluate(trials: list[Trial]) -> list[Trial]:
        steps.extend(t.step for t in trials)
        Y, S = rec(torch.tensor([t.x for t in trials], dtype=torch.float64))
        out = []
        for i, (t, y) in enumerate(zip(trials, Y.tolist())):
            if any(math.isnan(v) for v in y):
                out.append(replace(t, status="failed", error="evaluation failed"))
                continue
            stderr = {n: 0.0 for n in objective_names if n in problem.exact}
            n_examples: dict[str, int] = {}
            if S is not None:
                stderr.update({n: float(S[i, c]) for n, c in zip(objective_names, cols) if n not in problem.exact})
                if problem.n_examples is not None:
                    n_examples = {n: problem.n_examples for n in objective_names if n in problem.tasks}
            out.append(replace(t, status="done", objectives={n: y[c] for n, c in zip(objective_names, cols)},
                               stderr=stderr, n_examples=n_examples))
        return out

    class ProposeTimes(NullObserver):
        def on_batch_end(self, summary: BatchSummary) -> None:
            if summary.propose_seconds is not None:
                propose.append(summary.propose_seconds)

    # A constrained problem tells the library its take-home target, once the loop takes one.
    told = {"target": problem.target()} if problem.minimums and "target" in LoopOptions.__dataclass_fields__ else {}
    options = LoopOptions(opt=opt, dim=problem.dim, objective_names=objective_names,
                          task_objective_names=[n for n in objective_names if n in problem.tasks],
                          ref_point=[problem.ref_point[c] for c in cols], budget=budget_for(len(objective_names)),
                          initial_points=recipes, **told)
    run_loop([], options, evaluate, ProposeTimes())
    return {"propose_seconds": propose, "steps": steps}


def initial_points(problem: Problem, budget: Budget, seed: int) -> torch.Tensor:
    """The library's initial design: the standard recipe(s) of a demo problem first, then seeded Sobol points."""
    from mmmo.search.strategies import initial_design

    return initial_design(budget.initial, problem.dim, seed, problem.recipes())


def run_cma(problem: Problem, budget: Budget, seed: int, rec: Recorder) -> dict[str, Any]:
    """CMA-ES on the sum of task scores (the mergekit-evolve approach; on a test function every objective is a
    task), started from the same initial design as the loop strategies.

    The initial design is evaluated first; its best point (by the observed summed task score) is CMA-ES's
    starting mean, and each later batch is one generation of `batch_size` children.
    """
    import cma

    task_cols = [problem.objectives.index(n) for n in problem.tasks]
    X0 = initial_points(problem, budget, seed)
    ys = rec(X0)[0].tolist()
    score = lambda y: sum(y[c] for c in task_cols) if not any(math.isnan(v) for v in y) else -1e9  # noqa: E731
    best = max(range(len(ys)), key=lambda i: score(ys[i]))
    es = cma.CMAEvolutionStrategy(X0[best].tolist(), 0.3, {"bounds": [0.0, 1.0], "popsize": budget.batch_size,
                                                           "seed": seed + 1, "verbose": -9})
    for _ in range(budget.batches):
        cand = es.ask()
        Y = rec(torch.stack([torch.as_tensor(c, dtype=torch.float64) for c in cand]))[0].tolist()
        es.tell(cand, [-score(y) for y in Y])
    return {}


def run_standard_recipe(problem: Problem, budget: Budget, seed: int, rec: Recorder) -> dict[str, Any]:
    """Only the standard recipe point(s): what a user trying the usual merge by hand gets."""
    rec(problem.recipes())
    return {}


def run_authors(problem: Problem, budget: Budget, seed: int, rec: Recorder) -> dict[str, Any]:
    """The MM-MO authors' released code as it effectively behaves: each batch's `candidates` are Sobol points
    (no acquisition), crossed with DE mutants of the top configurations (weak-to-strong), then the
    `batch_size` the GPs (noise inferred) are least sure of are kept (Fisher screening)."""
    from mmmo.search.fisher import fisher_screen
    from mmmo.search.gp import fit_models
    from mmmo.search.strategies import batch_seed, sobol_points
    from mmmo.search.weak_to_strong import weak_to_strong

    task_cols = [problem.objectives.index(n) for n in problem.tasks]
    X_seen = initial_points(problem, budget, seed)
    Y_obs = rec(X_seen)[0]
    skip = budget.initial  # the Sobol stream continues after the initial design's points
    for b in range(1, budget.batches + 1):
        ok = ~torch.isnan(Y_obs).any(-1)
        X_done, Y_done = X_seen[ok], Y_obs[ok]
        model = fit_models(X_done, Y_done, prior_mean="fitted")  # the released code's BoTorch GPs
        generator = torch.Generator().manual_seed(batch_seed(seed, b))
        kept = X_seen.new_zeros(0, problem.dim)
        for _ in range(8):  # top up (rarely needed) when screening drops near-duplicates
            proposals = sobol_points(budget.candidates, problem.dim, seed, skip=skip)
            skip += budget.candidates
            X, _ = weak_to_strong(proposals, X_done, Y_done[:, task_cols], top_k=5, f=0.5, cr=0.5,
                                  generator=generator)
            keep = fisher_screen(model, X, budget.batch_size - kept.shape[0], torch.cat([X_seen, kept]))
            kept = torch.cat([kept, X[keep]])
            if kept.shape[0] == budget.batch_size:
                break
        Y_obs = torch.cat([Y_obs, rec(kept)[0]])
        X_seen = torch.cat([X_seen, kept])
    return {}


def warm_imports(strategies: Sequence[str]) -> None:
    """Import what the strategies use before any run, so no run's time includes a first import."""
    import mmmo.search.loop  # noqa: F401
    import mmmo.search.strategies  # noqa: F401

    if "cma-es" in strategies:
        import cma  # noqa: F401
    if "nsga2" in strategies:
        import optuna  # noqa: F401


def run_one(name: str, problem: Problem, budget: Budget, seed: int) -> dict[str, Any]:
    rec = Recorder(problem, seed)
    runner = {"cma-es": run_cma, "standard recipe": run_standard_recipe, "authors' code": run_authors}.get(name)
    t0 = time.perf_counter()
    extra = runner(problem, budget, seed, rec) if runner else run_loop_strategy(name, problem, budget, seed, rec)
    seconds = time.perf_counter() - t0
    r = {"strategy": name, "seed": seed, **rec.result(), "seconds": seconds, **extra}
    if name in LOOP_STRATEGIES:
        r["spec"] = spec_id(name, problem, budget, seed)
    # BO batch-step time: the run's time outside evaluation, per batch after the initial design
    r["batches"] = 0 if name == "standard recipe" else budget.batches
    r["step_seconds"] = (seconds - rec.seconds) / r["batches"] if r["batches"] else math.nan
    return r


# ------------------------------------------------------------------------------------------------- metrics


def hv_curve(ys: Sequence[Sequence[float]], ref: Sequence[float]) -> list[float]:
    """Hypervolume of the first k evaluated points against `ref`, for k = 1..len(ys) (NaN rows skipped)."""
    from mmmo.search.pareto import hypervolume, pareto_mask

    Y = torch.tensor(ys, dtype=torch.float64)
    out: list[float] = []
    front = Y.new_zeros(0, Y.shape[-1])
    last = 0.0
    for k in range(Y.shape[0]):
        y = Y[k : k + 1]
        if bool(torch.isnan(y).any()) or (front.shape[0] and bool((front >= y).all(-1).any())):
            out.append(last)  # a failed or dominated point leaves the hypervolume as it was
            continue
        front = torch.cat([front, y])
        front = front[pareto_mask(front)]
        last = hypervolume(front, list(ref))
        out.append(last)
    return out


def best_mean_task(ys: Sequence[Sequence[float]], task_cols: Sequence[int]) -> float:
    vals = [statistics.fmean(y[c] for c in task_cols) for y in ys if not any(math.isnan(v) for v in y)]
    return max(vals) if vals else math.nan


def evals_to_reach(curve: Sequence[float], target: float) -> float:
    """1-based number of evaluations after which the curve reaches `target` (inf if never)."""
    return next((k + 1 for k, v in enumerate(curve) if v >= target), math.inf)


def quartiles(v: Sequence[float]) -> tuple[float, float, float]:
    big = 1e18  # "never" (inf) would turn the interpolated quartiles into NaN
    s = sorted(min(x, big) for x in v)
    if len(s) == 1:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[1], q[0], q[2]


def fmt(v: Sequence[float], digits: int, scale: float = 1.0) -> str:
    v = [x for x in v if not math.isnan(x)]
    if not v:
        return "–"
    med, q1, q3 = (q * scale for q in quartiles(v))
    f = lambda a: "never" if a >= 1e17 else f"{a:.{digits}f}"  # noqa: E731
    return f"{f(med)} [{f(q1)}–{f(q3)}]"


def make_table(runs: list[dict[str, Any]], curves: dict[tuple[str, int], list[float]], ref: list[float],
               task_cols: Sequence[int], strategies: Sequence[str]) -> tuple[str, dict[str, Any]]:
    best_hv = max(c[-1] for c in curves.values())
    target = REACH_FRACTION * best_hv
    lines = [
        f"| strategy | seeds | final HV, % of best seen | final HV (raw) | best mean task score | evals to {REACH_FRACTION:.0%} of best HV "
        "| seeds reaching it | BO s / batch | s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"best_hv": best_hv, "target": target, "ref_point": ref}
    for s in strategies:
        rs = [r for r in runs if r["strategy"] == s]
        if not rs:
            continue
        hv = [curves[(s, r["seed"])][-1] for r in rs]
        bt = [best_mean_task(r["y"], task_cols) for r in rs]
        reach = [evals_to_reach(curves[(s, r["seed"])], target) for r in rs]
        step = [r.get("step_seconds", math.nan) for r in rs]
        secs = [r["seconds"] for r in rs]
        summary[s] = {"hv": hv, "best_task": bt, "reach": reach, "step_seconds": step}
        copied = {r.get("copied_from") for r in rs}
        label = f"{s} (= {copied.pop()})" if len(copied) == 1 and None not in copied else s
        step_txt = f"{statistics.median(step):.2f}" if not all(math.isnan(x) for x in step) else "–"
        pct = fmt(hv, 1, 100 / best_hv) if best_hv > 0 else "–"  # no run dominated the reference point
        lines.append(f"| {label} | {len(rs)} | {pct} "
                     f"| {statistics.median(hv):.4g} | {fmt(bt, 3)} | {fmt(reach, 0)} "
                     f"| {sum(not math.isinf(x) for x in reach)}/{len(rs)} | {step_txt} "
                     f"| {statistics.median(secs):.1f} |")
    return "\n".join(lines), summary


def plot(runs: list[dict[str, Any]], curves: dict[tuple[str, int], list[float]], strategies: Sequence[str],
         total: int, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in strategies:
        cs = [curves[(s, r["seed"])] for r in runs if r["strategy"] == s]
        if not cs:
            continue
        n = max(max(len(c) for c in cs), total)
        a = np.array([c + [c[-1]] * (n - len(c)) for c in cs])  # the standard recipe stays flat after its point(s)
        k = np.arange(1, n + 1)
        med = np.median(a, 0)
        style = ":" if s == "standard recipe" else "--" if s.startswith("mm-mo ") else "-"
        color = plt.get_cmap("tab20")(ALL_STRATEGIES.index(s) % 20)  # one colour per strategy, on every plot
        (line,) = ax.plot(k, med, style, label=s, lw=2 if s == "mm-mo" else 1.2, color=color)
        ax.fill_between(k, np.percentile(a, 25, 0), np.percentile(a, 75, 0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume (fixed reference point, true values)")
    ax.set_title(f"{title}: hypervolume vs evaluations (median, IQR shaded)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def report(runs: list[dict[str, Any]], key: dict[str, Any], strategies: Sequence[str], png: Path) -> None:
    """Print one problem's table (markdown) and write its plot."""
    ref = key["ref_point"]
    budget = Budget(**key["budget"])
    task_cols = [key["objectives"].index(n) for n in key["tasks"]]
    strategies = [s for s in strategies if any(r["strategy"] == s for r in runs)]
    if not runs:
        print(f"\nproblem {key['problem']}: no runs")
        return
    curves = {(r["strategy"], r["seed"]): hv_curve(r["y"], ref) for r in runs}
    table, _ = make_table(runs, curves, ref, task_cols, strategies)
    plot(runs, curves, strategies, budget.total, key["problem"], png)
    noise = " (noisy: optimizer sees noisy values, scores use true ones)" if key.get("noisy") else ""
    print(f"\nproblem {key['problem']}{noise}, budget {budget.total} evaluations ({budget.initial} initial + "
          f"{budget.batches} x {budget.batch_size}, {budget.candidates} candidates), reference point "
          f"{[round(v, 4) for v in ref]}\n")
    print(table)
    print(f"\nplot: {png}")


# ---------------------------------------------------------------------------------------------------- main


def results_key(problem: Problem, budget: Budget) -> dict[str, Any]:
    return json.loads(json.dumps({
        "problem": problem.name, "budget": vars(budget), "ref_point": problem.ref_point,
        "objectives": problem.objectives, "tasks": problem.tasks, "noisy": problem.noisy, **problem.info,
    }))


def default_out(problem: str, smoke: bool) -> Path:
    return (SMOKE_OUT / f"search_quality_{problem}_smoke.json") if smoke else DATA / f"search_quality_{problem}.json"


def parts(out: Path) -> list[Path]:
    """The part files of a default results file (`search_quality_<problem>.part<anything>.json`): a second
    process's runs, written with `--out`, which join the default file's table without naming them."""
    return sorted(out.parent.glob(f"{out.stem}.part*.json"))


def merge_runs(runs: list[dict[str, Any]], key: dict[str, Any], include: Sequence[Path],
               auto: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """`runs` plus the runs of `include` (which must have `key`) and of `auto` (skipped, with a warning,
    when their key differs); a (strategy, seed) already present is not taken twice."""
    runs = list(runs)
    for extra in [*include, *(p for p in auto if p not in include)]:
        other = json.loads(extra.read_text())
        if other.get("key") != key:
            if extra in include:
                sys.exit(f"{extra}: different problem, budget or reference point, not comparable")
            print(f"warning: {extra} left out: different problem, budget or reference point", file=sys.stderr)
            continue
        have = {(r["strategy"], r["seed"]) for r in runs}
        runs += [r for r in other["runs"] if (r["strategy"], r["seed"]) not in have]
    return runs


def quiet_benchmark(threads: int) -> None:
    """A benchmark process's set-up: `threads` torch CPU threads, mmmo's log at errors only, no import warnings."""
    import logging
    import warnings

    torch.set_num_threads(threads)
    logging.getLogger("mmmo").setLevel(logging.ERROR)
    # gpytorch still scripts a few functions at import; mmmo hides the numerical warnings it expects itself.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script(_method)?` is deprecated", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=[*PROBLEMS, "all"], default="demo",
                   help="'all' only with --report-only: every stored problem's table")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..S-1 for random, nsga2, cma-es, standard recipe, authors' code (default 10)")
    p.add_argument("--bo-seeds", type=int, default=None, help="seeds for qnehvi and every mm-mo variant (default 5)")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help=f"comma-separated subset of: {', '.join(ALL_STRATEGIES)}")
    p.add_argument("--initial", type=int, default=None, help="budget override (default: the problem's own)")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--candidates", type=int, default=None)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny budget ({SMOKE_BUDGET.total} = {SMOKE_BUDGET.initial} + {SMOKE_BUDGET.batches} x "
                        f"{SMOKE_BUDGET.batch_size}), 1 seed each, results under {SMOKE_OUT}")
    p.add_argument("--demo-dir", type=Path, default=None,
                   help=f"the demo build (default {DEFAULT_DEMO_DIR}; .cache/demo-layers6 for demo-layers6)")
    p.add_argument("--limit", type=int, default=DEMO_EXAMPLES, help="examples per task (demo-real and the tables)")
    p.add_argument("--build-table", type=int, metavar="N",
                   help="evaluate N Sobol demo points into the table of --problem (demo or demo-layers3), then exit")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (resumable; default benchmarks/data/search_quality_<problem>.json)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="only print the table and plot of stored runs")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in the results file")
    p.add_argument("--include", type=Path, nargs="*", default=[],
                   help="other results files (same problem, budget and reference point) whose runs join the table")
    a = p.parse_args(argv)
    quiet_benchmark(a.threads)

    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in ALL_STRATEGIES]
    if unknown:
        sys.exit(f"unknown strategies: {unknown}; choose from {ALL_STRATEGIES}")
    seeds = a.seeds if a.seeds is not None else (1 if a.smoke else 10)
    bo_seeds = a.bo_seeds if a.bo_seeds is not None else (1 if a.smoke else 5)
    n_seeds = lambda s: bo_seeds if is_bo(s) else seeds  # noqa: E731

    if a.build_table:
        groups = {"demo": 1, "demo-layers3": 3, "demo-layers6": 6}.get(a.problem)
        if groups is None:
            sys.exit("--build-table builds the table of --problem demo, demo-layers3 or demo-layers6")
        build_table(demo_dir_for(groups, a.demo_dir), a.build_table, a.limit, table_path(groups), layer_groups=groups)
        return

    if a.problem == "all":
        if not a.report_only or a.out or a.include:
            sys.exit("--problem all only prints stored tables: use it with --report-only (and no --out/--include)")
        for name in PROBLEMS:
            path = default_out(name, a.smoke)
            if path.is_file():
                stored = json.loads(path.read_text())
                runs = merge_runs(stored["runs"], stored["key"], [], parts(path))
                report(runs, stored["key"], strategies, path.with_suffix(".png"))
        return

    out = a.out or default_out(a.problem, a.smoke)
    if a.report_only:  # the table and plot from the stored runs, with their stored key
        if not out.is_file():
            sys.exit(f"no results at {out}")
        stored = json.loads(out.read_text())
        key, runs = stored["key"], stored["runs"]
    else:
        base = SMOKE_BUDGET if a.smoke else PROBLEM_BUDGETS[a.problem]
        budget = Budget(*(v if v is not None else d for v, d in
                          zip((a.initial, a.batches, a.batch_size, a.candidates), vars(base).values())))
        problem = make_problem(a.problem, budget, demo_dir_for(1, a.demo_dir), a.limit)
        skipped = [s for s in strategies if s in DEMO_ONLY and problem.layer_groups is None]
        if skipped:
            print(f"skipping {skipped}: demo problems only", file=sys.stderr)
        strategies = [s for s in strategies if s not in skipped]
        key = results_key(problem, budget)
        runs = []
        if out.is_file() and not a.fresh:
            old = json.loads(out.read_text())
            if old.get("key") == key:
                runs = old["runs"]
            else:
                print(f"{out}: stored runs are for another problem, budget or reference point; starting over "
                      "(the file is overwritten at the first run)", file=sys.stderr)
        # runs another process already stored (--include, part files) are not run again here either
        others = merge_runs([], key, a.include, parts(out) if a.out is None else [])
        done = {(r["strategy"], r["seed"]) for r in runs + others}
        warm_imports(strategies)
        for seed in range(max(seeds, bo_seeds)):  # seed-major, so a cut-short run still has every strategy per seed
            for s in strategies:
                if (s, seed) in done or seed >= n_seeds(s):
                    continue
                sid = spec_id(s, problem, budget, seed)
                same = next((r for r in runs + others
                             if sid is not None and r["seed"] == seed and r.get("spec") == sid), None)
                if same is not None:  # the same OptimizerSpec already ran at this seed: the same run
                    r = {**same, "strategy": s, "copied_from": same.get("copied_from", same["strategy"])}
                    print(f"seed {seed} {s:20s} same OptimizerSpec as {r['copied_from']!r}: copied", flush=True)
                else:
                    r = run_one(s, problem, budget, seed)
                runs.append(r)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".json.tmp")
                tmp.write_text(json.dumps({"key": key, "runs": runs}, separators=(",", ":")))
                tmp.replace(out)
                print(f"seed {seed} {s:20s} final HV {hv_curve(r['y'], problem.ref_point)[-1]:.4g} "
                      f"({r['seconds']:.1f} s, {r['step_seconds']:.2f} s/batch proposing)", flush=True)
    runs = merge_runs(runs, key, a.include, parts(out) if a.out is None else [])
    runs = [r for r in runs if r["strategy"] in strategies and (a.report_only or r["seed"] < n_seeds(r["strategy"]))]
    report(runs, key, strategies, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
