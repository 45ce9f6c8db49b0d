"""The wide suite's summary: per family, the final hypervolume of the default search against plain qNEHVI
(BoTorch's fitted prior), the prior pinned everywhere, the prior decided by the data (`optimizer.prior_mean:
forecast`), random and NSGA-II, and verdicts of the default and of the forecast prior.

    # run one family's problems (each stores benchmarks/data/search_quality_suite-<family>[-noisy].json)
    .venv/bin/python -m benchmarks.search_quality --problem suite-zdt2 \
        --strategies "mm-mo forecast prior,qnehvi,mm-mo worst prior,random,nsga2" --bo-seeds 5 --seeds 10
    .venv/bin/python -m benchmarks.wide_suite            # the summary of every stored suite problem
    .venv/bin/python -m benchmarks.wide_suite --noisy    # the noisy variants

The default is not run on its own: `optimizer.prior_mean: auto` pins the prior from 3 objectives, where the
default search is the pinned column's run, and keeps it fitted below, where it is the forecast column's (which
keeps it fitted there too). The families and why each is there: benchmarks/suite_problems.py. Families kept out
of the design loop are summarised apart from the others.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.metrics import hv_curve, quartiles
from benchmarks.report import key_minimums
from benchmarks.results import StrategyRun, merge_runs, parts, read_results, results_path
from benchmarks.strategies import BO_SEEDS, SEEDS, is_bo
from benchmarks.suite_problems import FAMILIES, PREFIX, Family
from mmmo.optimizer.gp import resolve_prior_mean

CANDIDATE = "mm-mo forecast prior"
PINNED = "mm-mo worst prior"
DEFAULT = "default"  # a column of the table, not a strategy: the runs of whichever strategy the default equals
COLUMNS = [DEFAULT, "qnehvi", PINNED, CANDIDATE, "random", "nsga2"]


def default_strategy(n_objectives: int) -> str | None:
    """The stored strategy whose runs are the default search's with `n_objectives` objectives (see the module
    docstring); None if neither is (the forecast prior no longer doing what `auto` does there)."""
    prior = resolve_prior_mean(n_objectives, "auto")
    if prior == "worst":
        return PINNED
    return CANDIDATE if resolve_prior_mean(n_objectives, "forecast") == prior else None


@dataclass(frozen=True)
class FamilyResult:
    """One suite problem's final hypervolumes per strategy and the share of the candidate's batches that pinned."""

    family: Family
    problem: str
    hv: dict[str, list[float]]
    pinned_share: float | None  # of the candidate's GP-proposed points, the share proposed under the "worst" prior
    n_objectives: int

    def runs(self, column: str) -> list[float]:
        """The final hypervolumes of a table column: a strategy's, or the default's (`default_strategy`)."""
        strategy = default_strategy(self.n_objectives) if column == DEFAULT else column
        return self.hv.get(strategy, []) if strategy is not None else []

    def verdict(self, other: str = "qnehvi", mine: str = CANDIDATE) -> str:
        """"win", "tie" or "loss" of column `mine` against column `other`: a loss is a median below `other`'s
        first quartile, a win a median above its third; anything between is a tie (within its IQR)."""
        ours, theirs = self.runs(mine), self.runs(other)
        if not ours or not theirs:
            return "–"
        med = statistics.median(ours)
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
    return FamilyResult(FAMILIES[key["family"]], problem, hv, pinned_share(runs), len(key["objectives"]))


def pinned_share(runs: Sequence[StrategyRun]) -> float | None:
    """Of the candidate's GP-proposed points, the share proposed under the "worst" prior (a batch's points share its
    prior, and batches are of equal size: this is also the share of its batches)."""
    kinds = [p.split(" ")[0] for r in runs if r.strategy == CANDIDATE and r.priors for p in r.priors if p is not None]
    return sum(k == "worst" for k in kinds) / len(kinds) if kinds else None


def cell(v: Sequence[float], best: float, seeds: int = BO_SEEDS) -> str:
    """Median [IQR] of `v` as % of `best`, with the number of runs when it is not `seeds` (the header's)."""
    if not v:
        return "–"
    med, q1, q3 = quartiles(v)
    count = "" if len(v) == seeds else f" ({len(v)} seed{'s' if len(v) > 1 else ''})"
    return f"{100 * med / best:.1f} [{100 * q1 / best:.1f}–{100 * q3 / best:.1f}]{count}"


def table(results: Sequence[FamilyResult], title: str) -> str:
    """A markdown table: per problem, each column's median [IQR] final hypervolume as % of the best run seen, and
    the verdicts of the default and of the forecast prior."""
    names = {DEFAULT: "default", "qnehvi": "plain qNEHVI", PINNED: "pinned everywhere", CANDIDATE: "forecast prior",
             "random": "random", "nsga2": "NSGA-II"}
    lines = [f"**{title}** (final hypervolume, % of the best run of the problem; median [IQR], {BO_SEEDS} seeds; "
             f"random and NSGA-II {SEEDS}; any other count in its cell)", "",
             "| family | front | " + " | ".join(names[c] for c in COLUMNS) + " | forecast: pinned batches "
             "| default vs qNEHVI | default vs random | default vs NSGA-II | forecast vs qNEHVI |",
             "|---" * (len(COLUMNS) + 7) + "|"]
    for r in results:
        best = max((max(v) for v in r.hv.values() if v), default=0.0) or 1.0
        share = "–" if r.pinned_share is None else f"{100 * r.pinned_share:.0f}%"
        lines.append(f"| {r.problem.removeprefix(PREFIX)} | {r.family.shape} | "
                     + " | ".join(cell(r.runs(c), best, BO_SEEDS if c == DEFAULT or is_bo(c) else SEEDS) for c in COLUMNS)
                     + f" | {share} | {r.verdict(mine=DEFAULT)} | {r.verdict('random', DEFAULT)}"
                     f" | {r.verdict('nsga2', DEFAULT)} | {r.verdict()} |")
    for label, mine in (("the default", DEFAULT), ("the forecast prior", CANDIDATE)):
        verdicts = [r.verdict(mine=mine) for r in results]
        lines += ["", f"{label} against plain qNEHVI: {verdicts.count('win')} wins, {verdicts.count('tie')} ties, "
                      f"{verdicts.count('loss')} losses, {verdicts.count('–')} not run, of {len(results)}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noisy", action="store_true", help="the noisy variants")
    a = p.parse_args(argv)
    suffix = "-noisy" if a.noisy else ""
    found = [r for r in (load(f"{PREFIX}{name}{suffix}") for name in FAMILIES) if r is not None]
    design = [r for r in found if not r.family.held_out]
    held_out = [r for r in found if r.family.held_out]
    tables = [table(rs, title) for rs, title in ((design, "Families in the design loop"),
                                                 (held_out, "Families kept out of the design loop")) if rs]
    print("\n\n".join(tables) if tables else f"no stored suite problem{suffix and ' (noisy)'}")


if __name__ == "__main__":
    main()
