"""The batch and the asynchronous schedule with many evaluators, on a virtual clock (run by hand).

    .venv/bin/python -m benchmarks.schedule_sim [--problem demo] [--workers 8] [--seeds 3] [--batches 6]

Every candidate takes a drawn time on the virtual clock: lognormal with median MEDIAN_SECONDS and sigma SIGMA
(generation lengths spread like this: a broken merge rambles to `max_gen_toks` where a good one stops early). The
optimiser's time is what it really takes on this machine, measured and added to the virtual clock; the evaluators
live on the virtual clock only. Trial k takes the same drawn time under both schedules (common random numbers).
Budget: 2N initial trials, then `--batches` batches of N (N evaluators). Prints, per schedule, the median [IQR] over
seeds of the virtual wall time to the budget, the evaluators' idle share and the hypervolume of the TRUE values
(the problem's reference point) at common times after the initial design; the runs are kept in
benchmarks/data/schedule_sim_<problem>_w<N>_b<batches>.json (a run already there is not run again).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from benchmarks.demo_tables import DEFAULT_DEMO_DIR, DEMO_EXAMPLES, demo_dir_for
from benchmarks.environment import DATA, benchmark_environment
from benchmarks.problems import Budget, Problem, make_problem
from benchmarks.strategies import Recorder, loop_options, scored_trials

MEDIAN_SECONDS = 60.0
SIGMA = 0.5
SCHEDULES = ("batch", "async")
GRID_POINTS = 12


class VirtualClock:
    """Virtual seconds: the optimiser's real time, charged between calls to the evaluators, plus their simulated
    time; what the simulation itself spends (scoring the problem) is never charged."""

    def __init__(self) -> None:
        self.now = 0.0
        self.optimiser_seconds = 0.0
        self._mark = time.perf_counter()

    def enter(self) -> None:
        """The optimiser hands over to the evaluators: its real time since it last had control is charged."""
        spent = time.perf_counter() - self._mark
        self.now += spent
        self.optimiser_seconds += spent

    def leave(self) -> None:
        self._mark = time.perf_counter()


@dataclass
class SimulatedRun:
    """One run: when each trial came back (virtual seconds) and its true values, and how the evaluators were used."""

    schedule: str
    seed: int
    back_at: list[float] = field(default_factory=list)
    true_values: list[list[float]] = field(default_factory=list)
    busy_seconds: float = 0.0
    optimiser_seconds: float = 0.0
    workers: int = 1

    @property
    def wall_seconds(self) -> float:
        return self.back_at[-1] if self.back_at else 0.0

    @property
    def idle_share(self) -> float:
        return 1.0 - self.busy_seconds / (self.workers * self.wall_seconds) if self.wall_seconds else 0.0


class SimulatedEvaluators:
    """`slots` evaluators on a `VirtualClock`: the asynchronous loop's `TrialWorkers`, and `evaluate` for the batch
    loop (a whole batch started at once, back in order of finishing)."""

    def __init__(self, slots: int, rec: Recorder, objective_names: Sequence[str], seed: int, run: SimulatedRun):
        self._slots, self.rec, self.names, self.run = slots, rec, list(objective_names), run
        self.clock = VirtualClock()
        self.running: list[tuple[float, int, Any]] = []
        self.draws = torch.Generator().manual_seed(7919 * (seed + 1))
        self.durations: list[float] = []

    @property
    def slots(self) -> int:
        return self._slots

    def duration(self, trial_id: int) -> float:
        """Trial `trial_id`'s evaluation time: the same draw whatever the schedule."""
        while len(self.durations) <= trial_id:
            z = float(torch.randn(1, generator=self.draws, dtype=torch.float64))
            self.durations.append(MEDIAN_SECONDS * math.exp(SIGMA * z))
        return self.durations[trial_id]

    def start(self, trial: Any) -> None:
        self.clock.enter()
        if len(self.running) >= self._slots:
            raise RuntimeError("a trial started while every simulated evaluator was busy")
        seconds = self.duration(trial.id)
        self.run.busy_seconds += seconds
        heapq.heappush(self.running, (self.clock.now + seconds, trial.id, trial))
        self.clock.leave()

    def next_finished(self, wait: bool) -> Any:
        self.clock.enter()
        try:
            if not self.running or (not wait and self.running[0][0] > self.clock.now):
                return None
            at, _, trial = heapq.heappop(self.running)
            self.clock.now = max(self.clock.now, at)
            done = scored_trials([trial], self.rec, self.names)[0]
            # Back when the driver reads it: an evaluator that finished while the optimiser was proposing waits.
            self.run.back_at.append(self.clock.now)
            self.run.true_values.append(self.rec.ys[-1])
            return done
        finally:
            self.clock.leave()

    def evaluate(self, trials: list[Any]) -> Iterator[Any]:
        """The batch schedule: `trials` on the evaluators, each freed one taking the next, yielded as they come back."""
        queue = list(trials)
        for _ in trials:
            while queue and len(self.running) < self._slots:
                self.start(queue.pop(0))
            yield self.next_finished(wait=True)


def simulate(problem: Problem, schedule: str, workers: int, batches: int, seed: int) -> SimulatedRun:
    """One run of mm-mo's default search under `schedule` with `workers` simulated evaluators."""
    from mmmo.optimizer.async_loop import run_async_loop
    from mmmo.optimizer.loop import run_loop
    from mmmo.spec.schema import OptimizerSpec

    # One take-home point per batch, as when the stored results ran: `auto`'s share grows with the batch, which
    # here is the worker count, and would change the runs.
    opt = OptimizerSpec(initial=2 * workers, batches=batches, batch_size=workers, seed=seed, schedule=schedule,
                        standard_recipes=problem.recipes() is not None, take_home_points=1)
    options = loop_options(opt, problem.objectives, problem)
    run = SimulatedRun(schedule=schedule, seed=seed, workers=workers)
    evaluators = SimulatedEvaluators(workers, Recorder(problem, seed), problem.objectives, seed, run)
    evaluators.clock.leave()
    if schedule == "async":
        run_async_loop([], options, evaluators)
    else:
        run_loop([], options, evaluators.evaluate)
    run.optimiser_seconds = evaluators.clock.optimiser_seconds
    return run


def hypervolume_at(run: SimulatedRun, times: Sequence[float], ref_point: Sequence[float]) -> list[float]:
    """The hypervolume of the true values of the trials back by each of `times` (0 before any)."""
    from mmmo.optimizer.pareto import hypervolume

    out = []
    for t in times:
        back = [y for at, y in zip(run.back_at, run.true_values) if at <= t]
        out.append(hypervolume(torch.tensor(back, dtype=torch.float64), ref_point) if back else 0.0)
    return out


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q = torch.tensor(list(values), dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return float(q[1]), float(q[0]), float(q[2])


def summarise(runs: list[SimulatedRun], problem: Problem, initial: int) -> list[str]:
    """The table: per schedule, wall time to the budget, idle share, optimiser time, and hypervolume at common
    virtual times, from when the batch schedule's initial design is back to when its last run ends."""
    by = {s: [r for r in runs if r.schedule == s] for s in SCHEDULES}
    start = max(r.back_at[initial - 1] for r in by["batch"])
    end = max(r.wall_seconds for r in by["batch"])
    times = [start + (end - start) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
    curves = {s: [hypervolume_at(r, times, problem.ref_point) for r in rs] for s, rs in by.items()}
    best = max(max(c) for cs in curves.values() for c in cs) or 1.0
    lines = [f"{problem.name}, {runs[0].workers} simulated evaluators, seeds {sorted({r.seed for r in runs})}",
             "| schedule | wall time to the budget (s) | evaluators idle | optimiser (s) | final hypervolume (% best) |",
             "|---|---|---|---|---|"]
    for s, rs in by.items():
        cells = [quartiles([r.wall_seconds for r in rs]), quartiles([100 * r.idle_share for r in rs]),
                 quartiles([r.optimiser_seconds for r in rs]), quartiles([100 * c[-1] / best for c in curves[s]])]
        lines.append(f"| {s} | " + " | ".join(f"{m:.4g} [{lo:.4g}-{hi:.4g}]" for m, lo, hi in cells) + " |")
    lines += ["", "hypervolume (% of the best seen, median over seeds) at equal virtual wall time:",
              "| time (s) | " + " | ".join(SCHEDULES) + " | async >= batch |", "|---|---|---|---|"]
    for i, t in enumerate(times):
        med = {s: quartiles([100 * c[i] / best for c in curves[s]])[0] for s in SCHEDULES}
        lines.append(f"| {t:.0f} | {med['batch']:.1f} | {med['async']:.1f} | {'yes' if med['async'] >= med['batch'] else 'no'} |")
    return lines


def main() -> None:
    benchmark_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="demo")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args()
    budget = Budget(initial=2 * args.workers, batches=args.batches, batch_size=args.workers)
    problem = make_problem(args.problem, budget, demo_dir_for(1, DEFAULT_DEMO_DIR), DEMO_EXAMPLES)
    path = DATA / f"schedule_sim_{args.problem}_w{args.workers}_b{args.batches}.json"
    stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    runs = []
    for seed in range(args.seeds):
        for schedule in SCHEDULES:
            key = f"{schedule}/{seed}"
            if key not in stored:
                began = time.perf_counter()
                stored[key] = asdict(simulate(problem, schedule, args.workers, args.batches, seed))
                path.write_text(json.dumps(stored, indent=1))
                print(f"{key}: {time.perf_counter() - began:.0f} s", flush=True)
            runs.append(SimulatedRun(**stored[key]))
    print("\n".join(summarise(runs, problem, budget.initial)))


if __name__ == "__main__":
    main()
