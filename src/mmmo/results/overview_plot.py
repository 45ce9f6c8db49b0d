"""overview.png: what a run found at a glance. Left, every merge's mean task score against sparsity (or trial id);
right, the chosen merge and each source per task with 95% error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmmo.results.paired import outcome_stderr
from mmmo.results.summary import RunSummary
from mmmo.run.atomic import atomic_write_bytes_via
from mmmo.run.records import SourceScore, Trial

Z95 = 1.959963984540054  # the normal 97.5% quantile: score ± Z95·stderr is a 95% interval


def candidate_stderr(candidate: Trial | SourceScore, objective: str) -> float | None:
    """Standard error of one objective's score: recorded (lm-eval's), else from its per-document outcomes."""
    if objective in candidate.stderr:
        return candidate.stderr[objective]
    return outcome_stderr(candidate.outcomes.get(objective, {}))


def _front_panel(ax: Any, summary: RunSummary) -> None:
    """Mean task score against the sparsity objective (against trial id without one); sources as stars."""
    sparsity = summary.sparsity_name
    front = {t.id for t in summary.pareto}

    def x_of(t: Trial) -> float:
        return float(t.id) if sparsity is None else t.objectives[sparsity]  # type: ignore[index]

    for on_front, colour, size, label in ((False, "#bbbbbb", 18, "merges"), (True, "#d62728", 30, "Pareto front")):
        trials = [t for t in summary.done if (t.id in front) == on_front]
        ax.scatter([x_of(t) for t in trials], [summary.mean_task_score(t) for t in trials],
                   s=size, c=colour, label=label, zorder=2)
    chosen = summary.best()
    if chosen is not None:
        ax.scatter([x_of(chosen)], [summary.mean_task_score(chosen)], s=140, facecolors="none", edgecolors="black",
                   label=f"chosen: trial {chosen.id}", zorder=3)
    for s in summary.sources:
        score = summary.source_mean_task_score(s)
        if score is None or s.objectives is None:
            continue
        if sparsity is None:  # a source has no trial id: a dashed level across the panel
            ax.axhline(score, ls="--", lw=0.8, c="#1f77b4")
            ax.annotate(s.name, (0.0, score), fontsize=8, xytext=(2, 2), textcoords="offset points")
            continue
        ax.scatter([s.objectives[sparsity]], [score], marker="*", s=120, c="#1f77b4", zorder=3)
        ax.annotate(s.name, (s.objectives[sparsity], score), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(sparsity if sparsity is not None else "trial")
    ax.set_ylabel("mean task score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _task_panel(ax: Any, summary: RunSummary, chosen: Trial) -> None:
    """Per task, the chosen merge and each scored source: score ± 1.96·stderr (no bar where it is unknown)."""
    candidates: list[tuple[str, Trial | SourceScore]] = [(f"trial {chosen.id}", chosen)]
    candidates += [(s.name, s) for s in summary.sources if s.objectives is not None]
    width = 0.8 / len(candidates)
    for k, (label, c) in enumerate(candidates):
        assert c.objectives is not None
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(summary.task_names))]
        ys = [c.objectives[n] for n in summary.task_names]
        errs = [(se or 0.0) * Z95 for se in (candidate_stderr(c, n) for n in summary.task_names)]
        colour = "#d62728" if k == 0 else None
        ax.errorbar(xs, ys, yerr=errs, fmt="o" if k == 0 else "*", capsize=3, label=label, color=colour)
    ax.set_xticks(range(len(summary.task_names)))
    ax.set_xticklabels(summary.task_names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("score (95% interval)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="best")


def plot_overview(summary: RunSummary, path: Path) -> None:
    """Write overview.png for a run with at least one done trial (the chosen merge is `summary.best()`, the take-home merge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = summary.best()
    if chosen is None:
        raise ValueError("an overview needs at least one done trial")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    _front_panel(left, summary)
    _task_panel(right, summary, chosen)
    fig.suptitle(f"Chosen merge: trial {chosen.id} (the take-home merge); ★ source models")
    fig.tight_layout()
    atomic_write_bytes_via(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
