"""Per-document outcomes for the staged-evaluation benchmark (benchmarks/stages.py): each candidate answers each
document of a task correctly with the surrogate's accuracy, documents correlated across candidates, and a trial
scored stage by stage on those answers as the library's staged evaluation scores it."""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from benchmarks.problems import Problem
from mmmo.run.documents import decode_outcomes, encode_outcomes, stage_sizes
from mmmo.run.records import Trial

P_CLAMP = (0.001, 0.999)


def answer_seed(seed: int, x: Sequence[float], task_index: int) -> int:
    """The seed of candidate x's per-document noise on task `task_index` (x rounded to 12 digits)."""
    key = f"{seed}|{task_index}|" + ",".join(f"{round(float(v), 12):.12f}" for v in x)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def document_answers(
    p: float, z: torch.Tensor, rho: float, seed: int, x: Sequence[float], task_index: int
) -> list[float]:
    """Candidate x's outcome (1.0 correct, 0.0 not) on each document of difficulty `z [N]` (document order):
    correct iff sqrt(rho) z_d + sqrt(1 - rho) e_d < Phi^-1(p), e ~ N(0, 1) seeded by (seed, x, task)."""
    p = min(max(float(p), P_CLAMP[0]), P_CLAMP[1])
    generator = torch.Generator().manual_seed(answer_seed(seed, x, task_index))
    e = torch.randn(z.shape, generator=generator, dtype=torch.float64)
    threshold = torch.special.ndtri(torch.tensor(p, dtype=torch.float64))
    latent = math.sqrt(rho) * z.to(torch.float64) + math.sqrt(1.0 - rho) * e
    return (latent < threshold).to(torch.float64).tolist()


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and lm-eval's standard error (sample standard deviation, ddof 1, over sqrt(n)); NaN for n < 2."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan
    return mean, statistics.stdev(values) / math.sqrt(n)


def score_next_stage(
    trial: Trial,
    answers: Mapping[str, Sequence[float]],
    exact: Mapping[str, float],
    stages: Sequence[float] | None,
    objective_names: Sequence[str],
) -> Trial:
    """`trial` scored on its next stage: `answers[task]` are its outcomes on all of the task's documents in scoring
    order, `exact` the exact objectives' values (sparsity). Each task objective is the mean of the documents
    scored so far (those of `trial.outcomes` first: they must agree with `answers`), with lm-eval's stderr and
    `n_examples`; status "partial" while stages remain, else "done"."""
    k = trial.stages_scored
    n_stages = len(stages) if stages else 1
    if k >= n_stages:
        raise ValueError(f"trial {trial.id} was already scored on all {k} stage(s)")
    objectives: dict[str, float] = {}
    stderr: dict[str, float] = {}
    n_examples: dict[str, int] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    for name in objective_names:
        if name in exact:
            objectives[name], stderr[name] = float(exact[name]), 0.0
            continue
        docs = list(answers[name])
        sizes = stage_sizes(len(docs), stages)
        lo, hi = (sizes[k - 1] if k else 0), sizes[k]
        earlier = decode_outcomes(trial.outcomes.get(name, {}).get(name, "")) if k else []
        if len(earlier) != lo or earlier != docs[:lo]:
            raise ValueError(
                f"trial {trial.id}: its stored outcomes of {name!r} are not its first {lo} answers"
            )
        values = earlier + docs[lo:hi]
        mean, se = mean_and_stderr(values)
        objectives[name] = mean
        if not math.isnan(se):  # one document: no sample stderr (the GP infers that objective's noise)
            stderr[name] = se
        n_examples[name] = len(values)
        outcomes[name] = {name: encode_outcomes(values)}
    return replace(
        trial,
        status="partial" if k + 1 < n_stages else "done",
        objectives=objectives,
        stderr=stderr,
        n_examples=n_examples,
        outcomes=outcomes,
        stages_scored=k + 1,
    )


def documents_scored(trials: Sequence[Trial], tasks: Sequence[str]) -> int:
    return sum(int(t.n_examples.get(n, 0)) for t in trials for n in tasks)


class BernoulliDocs:
    """Per-document outcomes of the demo surrogate at one benchmark seed (see the module docstring)."""

    def __init__(self, problem: Problem, n_docs: int, rho: float, seed: int) -> None:
        self.problem, self.n_docs, self.rho, self.seed = problem, n_docs, rho, seed
        self.task_cols = [problem.objectives.index(t) for t in problem.tasks]
        generator = torch.Generator().manual_seed(7_919 * (seed + 1))
        self.z = torch.randn((len(problem.tasks), n_docs), generator=generator, dtype=torch.float64)
        self.order = [torch.randperm(n_docs, generator=generator).tolist() for _ in problem.tasks]
        self._cache: dict[tuple[float, ...], tuple[list[float], dict[str, list[float]]]] = {}

    def score(self, xs: Sequence[Sequence[float]]) -> list[tuple[list[float], dict[str, list[float]]]]:
        """Per candidate: its true values (objectives order) and its answers per task in scoring order."""
        keys = [tuple(float(v) for v in x) for x in xs]
        new = [k for k in dict.fromkeys(keys) if k not in self._cache]
        if new:
            Y = self.problem.evaluate(torch.tensor(new, dtype=torch.float64)).tolist()
            for key, y in zip(new, Y):
                answers = {}
                for j, (task, col) in enumerate(zip(self.problem.tasks, self.task_cols)):
                    a = document_answers(y[col], self.z[j], self.rho, self.seed, key, j)
                    answers[task] = [a[d] for d in self.order[j]]
                self._cache[key] = (y, answers)
        return [self._cache[k] for k in keys]

