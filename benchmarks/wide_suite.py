"""The wide suite's summary: per family, the final hypervolume of the prior decided by the data
(`optimizer.prior_mean: forecast`) against plain qNEHVI (BoTorch's fitted prior), the prior pinned everywhere
(what the default `auto` does from 3 objectives), random and NSGA-II, and verdicts against each.

    # run one family's problems (each stores benchmarks/data/search_quality_suite-<family>[-noisy].json)
    .venv/bin/python -m benchmarks.search_quality --problem suite-zdt2 \
        --strategies "mm-mo forecast prior,qnehvi,mm-mo worst prior,random,nsga2" --bo-seeds 5 --seeds 10
    .venv/bin/python -m benchmarks.wide_suite            # the summary of every stored suite problem
    .venv/bin/python -m benchmarks.wide_suite --noisy    # the noisy variants

The families and why each is there: benchmarks/suite_problems.py. Families kept out of the design loop are
summarised apart from the others.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.metrics import hv_curve, quartiles
from benchmarks.report import key_minimums
from benchmarks.results import StrategyRun, merge_runs, parts, read_results, results_path
from benchmarks.suite_problems import FAMILIES, PREFIX, Family

CANDIDATE = "mm-mo forecast prior"
COLUMNS = [CANDIDATE, "qnehvi", "mm-mo worst prior", "random", "nsga2"]


@dataclass(frozen=True)
class FamilyResult:
    """One suite problem's final hypervolumes per strategy and the share of the candidate's batches that pinned."""

    family: Family
    problem: str
    hv: dict[str, list[float]]
    pinned_share: float | None  # of the candidate's GP-proposed points, the share proposed under the "worst" prior

    def verdict(self, other: str = "qnehvi") -> str:
        """"win", "tie" or "loss" of the candidate against `other`: a loss is a median below `other`'s first
        quartile, a win a median above its third; anything between is a tie (within its IQR)."""
        mine, theirs = self.hv.get(CANDIDATE), self.hv.get(other)
        if not mine or not theirs:
            return "–"
        med = statistics.median(mine)
        _, q1, q3 = quartiles(theirs)
        return "loss" if med < q1 else "win" if med > q3 else "tie"


def load(problem: str) -> FamilyResult | None:
    """The stored runs of suite problem `problem`, or None if it has none."""
    path = results_path("search_quality", problem, False)
    if not path.is_file():
        return None
    key, runs = read_results(path, StrategyRun.from_json)
    assert key is not None
    runs = merge_runs(runs, key, [], parts(path))  # runs other processes stored in part files
    hv: dict[str, list[float]] = {}
    for r in runs:
        hv.setdefault(r.strategy, []).append(hv_curve(r.y, key["ref_point"], key_minimums(key))[-1])
    return FamilyResult(FAMILIES[key["family"]], problem, hv, pinned_share(runs))


def pinned_share(runs: Sequence[StrategyRun]) -> float | None:
    """Of the candidate's GP-proposed points, the share proposed under the "worst" prior (a batch's points share its
    prior, and batches are of equal size: this is also the share of its batches)."""
    kinds = [p.split(" ")[0] for r in runs if r.strategy == CANDIDATE and r.priors for p in r.priors if p is not None]
    return sum(k == "worst" for k in kinds) / len(kinds) if kinds else None


def cell(v: Sequence[float], best: float) -> str:
    if not v:
        return "–"
    med, q1, q3 = quartiles(v)
    return f"{100 * med / best:.1f} [{100 * q1 / best:.1f}–{100 * q3 / best:.1f}]"


def table(results: Sequence[FamilyResult], title: str) -> str:
    """A markdown table: per problem, each strategy's median [IQR] final hypervolume as % of the best run seen."""
    lines = [f"**{title}** (final hypervolume, % of the best run of the problem; median [IQR], 5 seeds; random "
             "and NSGA-II 10; verdicts of the first column)", "",
             "| family | front | " + " | ".join(COLUMNS) + " | pinned batches | vs qNEHVI | vs pinned | vs random | vs NSGA-II |",
             "|---" * (len(COLUMNS) + 7) + "|"]
    for r in results:
        best = max((max(v) for v in r.hv.values() if v), default=0.0) or 1.0
        share = "–" if r.pinned_share is None else f"{100 * r.pinned_share:.0f}%"
        lines.append(f"| {r.problem.removeprefix(PREFIX)} | {r.family.shape} | "
                     + " | ".join(cell(r.hv.get(s, []), best) for s in COLUMNS)
                     + f" | {share} | {r.verdict()} | {r.verdict('mm-mo worst prior')} | {r.verdict('random')} | {r.verdict('nsga2')} |")
    verdicts = [r.verdict() for r in results]
    lines += ["", f"against qNEHVI: {verdicts.count('win')} wins, {verdicts.count('tie')} ties, "
                  f"{verdicts.count('loss')} losses of {len(results)}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noisy", action="store_true", help="the noisy variants")
    a = p.parse_args(argv)
    suffix = "-noisy" if a.noisy else ""
    found = [r for r in (load(f"{PREFIX}{name}{suffix}") for name in FAMILIES) if r is not None]
    design = [r for r in found if not r.family.held_out]
    held_out = [r for r in found if r.family.held_out]
    print(table(design, "Families in the design loop"))
    print()
    print(table(held_out, "Families kept out of the design loop"))


if __name__ == "__main__":
    main()
