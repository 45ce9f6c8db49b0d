"""The search-quality report of one problem: its markdown table (median [IQR] per strategy) and its plot of
hypervolume against evaluations."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.metrics import best_mean_task, evals_to_reach, hv_curve, quartiles
from benchmarks.problems import Budget
from benchmarks.results import StrategyRun
from benchmarks.strategies import ALL_STRATEGIES

REACH_FRACTION = 0.95  # "evals to reach": this share of the best final hypervolume any run of the problem saw


def fmt(v: Sequence[float], digits: int, scale: float = 1.0, general: bool = False) -> str:
    """`v`'s median [IQR] times `scale` (NaNs left out; "never" for an infinite value), to `digits` decimals, or
    `digits` significant digits when `general` (hypervolumes are small numbers)."""
    v = [x for x in v if not math.isnan(x)]
    if not v:
        return "–"
    med, q1, q3 = (q * scale for q in quartiles(v))
    f = lambda a: "never" if a >= 1e17 else f"{a:.{digits}{'g' if general else 'f'}}"  # noqa: E731
    return f"{f(med)} [{f(q1)}–{f(q3)}]"


def final_scores(
    runs: list[StrategyRun], curves: dict[tuple[str, int], list[float]], task_cols: Sequence[int],
    strategies: Sequence[str],
) -> Iterator[tuple[str, list[StrategyRun], list[float], list[float]]]:
    """Per strategy that has runs (in `strategies` order): its runs, their final hypervolumes and best mean task
    scores (the two columns every table starts from)."""
    for s in strategies:
        rs = [r for r in runs if r.strategy == s]
        if rs:
            yield s, rs, [curves[(s, r.seed)][-1] for r in rs], [best_mean_task(r.y, task_cols) for r in rs]


def make_table(runs: list[StrategyRun], curves: dict[tuple[str, int], list[float]], ref: list[float],
               task_cols: Sequence[int], strategies: Sequence[str]) -> tuple[str, dict[str, Any]]:
    best_hv = max(c[-1] for c in curves.values())
    target = REACH_FRACTION * best_hv
    lines = [
        f"| strategy | seeds | final HV, % of best seen | final HV (raw) | best mean task score | evals to {REACH_FRACTION:.0%} of best HV "
        "| seeds reaching it | BO s / batch | s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"best_hv": best_hv, "target": target, "ref_point": ref}
    for s, rs, hv, bt in final_scores(runs, curves, task_cols, strategies):
        reach = [evals_to_reach(curves[(s, r.seed)], target) for r in rs]
        step = [r.step_seconds for r in rs]
        secs = [r.seconds for r in rs]
        summary[s] = {"hv": hv, "best_task": bt, "reach": reach, "step_seconds": step}
        copied = {r.copied_from for r in rs}
        label = f"{s} (= {copied.pop()})" if len(copied) == 1 and None not in copied else s
        step_txt = f"{statistics.median(step):.2f}" if not all(math.isnan(x) for x in step) else "–"
        pct = fmt(hv, 1, 100 / best_hv) if best_hv > 0 else "–"  # no run dominated the reference point
        lines.append(f"| {label} | {len(rs)} | {pct} "
                     f"| {statistics.median(hv):.4g} | {fmt(bt, 3)} | {fmt(reach, 0)} "
                     f"| {sum(not math.isinf(x) for x in reach)}/{len(rs)} | {step_txt} "
                     f"| {statistics.median(secs):.1f} |")
    return "\n".join(lines), summary


def plot(runs: list[StrategyRun], curves: dict[tuple[str, int], list[float]], strategies: Sequence[str],
         total: int, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in strategies:
        cs = [curves[(s, r.seed)] for r in runs if r.strategy == s]
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
    finish_plot(fig, ax, out, ylabel="hypervolume (fixed reference point, true values)",
                title=f"{title}: hypervolume vs evaluations (median, IQR shaded)")


def finish_plot(fig: Any, ax: Any, out: Path, *, ylabel: str, title: str) -> None:
    """Every benchmark plot's last step: evaluations on x, `ylabel`, `title`, the legend; written to `out`, closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("evaluations")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def key_minimums(key: dict[str, Any]) -> list[tuple[int, float]]:
    """A results key's outcome constraints as (column, lowest allowed value) pairs (none: unconstrained)."""
    return [(key["objectives"].index(n), float(v)) for n, v in key.get("minimums", {}).items()]


def report(runs: list[StrategyRun], key: dict[str, Any], strategies: Sequence[str], png: Path) -> None:
    """Print one problem's table (markdown) and write its plot."""
    ref = key["ref_point"]
    budget = Budget(**key["budget"])
    task_cols = [key["objectives"].index(n) for n in key["tasks"]]
    strategies = [s for s in strategies if any(r.strategy == s for r in runs)]
    if not runs:
        print(f"\nproblem {key['problem']}: no runs")
        return
    curves = {(r.strategy, r.seed): hv_curve(r.y, ref, key_minimums(key)) for r in runs}
    table, _ = make_table(runs, curves, ref, task_cols, strategies)
    plot(runs, curves, strategies, budget.total, key["problem"], png)
    noise = " (noisy: optimizer sees noisy values, scores use true ones)" if key.get("noisy") else ""
    print(f"\nproblem {key['problem']}{noise}, budget {budget.total} evaluations ({budget.initial} initial + "
          f"{budget.batches} x {budget.batch_size}, {budget.candidates} candidates), reference point "
          f"{[round(v, 4) for v in ref]}\n")
    print(table)
    print(f"\nplot: {png}")

