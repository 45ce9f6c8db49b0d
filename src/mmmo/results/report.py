"""Summaries of a run: the Pareto front as CSV/JSON/PNG, the hypervolume curve, report.md and the rich table.

report.md leads with the chosen merge against the sources (chosen_merge) and overview.png (overview_plot).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from mmmo.results.chosen_merge import chosen_merge_section
from mmmo.results.overview_plot import plot_overview
from mmmo.results.summary import RunSummary, summarize_run
from mmmo.run.atomic import atomic_write_bytes_via, atomic_write_text
from mmmo.run.store import RunState
from mmmo.spec.schema import SearchSpec


def _pareto_records(summary: RunSummary) -> list[dict[str, Any]]:
    return [
        {
            "trial": t.id,
            "batch": t.batch,
            "step": t.step,
            **({"method": summary.method(t)} if summary.is_mixed else {}),
            "objectives": t.objectives,
            "mean_task_score": summary.mean_task_score(t),
            "documents": summary.documents(t),
            "params": t.params,
        }
        for t in summary.pareto
    ]


def _take_home_record(summary: RunSummary) -> dict[str, Any]:
    choice = summary.take_home
    return {
        "trial": None if choice.trial is None else choice.trial.id,
        "how": choice.how,
        "requirements": list(choice.requirements),
        "infeasible": sorted(choice.infeasible),
        "none_qualifies": choice.none_qualifies,
    }


def pareto_json(summary: RunSummary) -> str:
    data = {
        "objectives": summary.objective_names,
        "ref_point": summary.ref_point,
        "hypervolume": summary.hypervolumes.get(max(summary.hypervolumes)) if summary.hypervolumes else None,
        "evaluations": len(summary.done) + len(summary.failed),
        "budget": summary.budget,
        "pareto": _pareto_records(summary),
        "take_home": _take_home_record(summary),
        "sources": [{"name": s.name, "objectives": s.objectives, "error": s.error} for s in summary.sources],
    }
    return json.dumps(data, indent=2)


def pareto_csv(summary: RunSummary) -> str:
    param_names = sorted({k for t in summary.pareto for k in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    method = ["method"] if summary.is_mixed else []
    writer.writerow(["trial", "batch", "step", *method, *summary.objective_names, "mean_task_score", *param_names])
    for t in summary.pareto:
        assert t.objectives is not None
        writer.writerow(
            [t.id, t.batch, t.step, *([summary.method(t)] if method else [])]
            + [f"{t.objectives[n]:.6g}" for n in summary.objective_names]
            + [f"{summary.mean_task_score(t):.6g}"]
            + [f"{t.params.get(p, float('nan')):.6g}" for p in param_names]
        )
    return buf.getvalue()


def plot_pareto(summary: RunSummary, path: Path) -> None:
    """2-D front, or pairwise panels for 3+ objectives; source models marked for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary.objective_names
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    pareto_ids = {t.id for t in summary.pareto}
    for ax, (i, j) in zip(axes.flat, pairs):
        xs = [t.objectives[names[i]] for t in summary.done]  # type: ignore[index]
        ys = [t.objectives[names[j]] for t in summary.done]  # type: ignore[index]
        on_front = [t.id in pareto_ids for t in summary.done]
        ax.scatter(
            [x for x, f in zip(xs, on_front) if not f],
            [y for y, f in zip(ys, on_front) if not f],
            s=18, c="#bbbbbb", label="merges",
        )
        ax.scatter(
            [x for x, f in zip(xs, on_front) if f],
            [y for y, f in zip(ys, on_front) if f],
            s=30, c="#d62728", label="Pareto front (all objectives)",
        )
        for s in summary.sources:
            if s.objectives is None:
                continue
            ax.scatter([s.objectives[names[i]]], [s.objectives[names[j]]], marker="*", s=120, c="#1f77b4")
            ax.annotate(s.name, (s.objectives[names[i]], s.objectives[names[j]]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.suptitle("Merges found (↑ better on every axis); ★ source models")
    fig.tight_layout()
    atomic_write_bytes_via(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_hypervolume(summary: RunSummary, spec: SearchSpec, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opt = spec.optimizer
    batches = sorted(summary.hypervolumes)
    evals = [opt.initial + b * opt.batch_size for b in batches]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(evals, [summary.hypervolumes[b] for b in batches], marker="o")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume")
    ax.set_title(f"{spec.name}: {opt.strategy}, ref point {_fmt_list(summary.ref_point)}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_bytes_via(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _fmt_list(xs: list[float] | None) -> str:
    return "—" if xs is None else "[" + ", ".join(f"{x:.3g}" for x in xs) + "]"


def _docs(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def stopped_line(summary: RunSummary) -> str | None:
    """"- k of n trials stopped early ...", with the documents they and the run took against full cost."""
    stopped = [t for t in summary.done if t.stopped]
    if not stopped:
        return None
    k, n = len(stopped), len(summary.done)
    line = f"- {k} of {n} trials stopped early after part of their documents (evaluation.stages)"
    # A trial scored on every stage took the full count; the recorded plan says so even when none has yet.
    full = summary.full_documents or max((summary.documents(t) or 0 for t in summary.done if not t.stopped), default=0)
    if not full:
        return line
    partial = sum(summary.documents(t) or 0 for t in stopped)
    total = sum(summary.documents(t) or 0 for t in summary.done)
    return (
        f"{line}: they were scored on {partial:,} documents where full scoring takes {k * full:,}; "
        f"the run scored {total:,} documents against {n * full:,} for a full-cost run"
    )


def _lead_bullets(summary: RunSummary, spec: SearchSpec) -> list[str]:
    lines = [
        f"- strategy: {spec.optimizer.strategy}, method: {', '.join(spec.merge.methods)}"
        + (" (searched)" if spec.merge.is_mixed else "") + f", granularity: {spec.merge.granularity}",
        f"- evaluations: {len(summary.done)} done, {len(summary.failed)} failed, budget {summary.budget}",
        f"- reference point: {_fmt_list(summary.ref_point)}",
    ]
    if summary.hypervolumes:
        last = max(summary.hypervolumes)
        lines.append(f"- hypervolume after batch {last}: {summary.hypervolumes[last]:.6g}")
    best = summary.best()
    if best is not None:
        lines.append(f"- take-home merge: trial {best.id} (mean task score {summary.mean_task_score(best):.4f})")
        for t in summary.done:
            if t.step == "standard":  # the recipe a user would try by hand, evaluated in the initial design
                gain = summary.mean_task_score(best) - summary.mean_task_score(t)
                which = f" ({summary.method(t)})" if summary.is_mixed else ""
                lines.append(
                    f"- standard recipe{which}: trial {t.id} ({summary.mean_task_score(t):.4f}); "
                    f"the best merge is {gain:+.4f} beyond it"
                )
    if summary.is_mixed and best is not None:
        per = summary.best_per_method()
        lines.append("- take-home merge per method (mean task score): " + ", ".join(
            f"{m} {summary.mean_task_score(t):.4f} (trial {t.id})" for m, t in per.items()
        ))
    more = [stopped_line(summary), prior_line(summary, spec), schedule_line(summary, spec)]
    return lines + [line for line in more if line]


def schedule_line(summary: RunSummary, spec: SearchSpec) -> str | None:
    """"- evaluators (optimizer.schedule auto: async): 2, busy 93% of the search's wall time (600 s); the optimiser
    proposed for 41 s (1.4 s a proposal)", over every asynchronous session; None when there was none."""
    if not summary.schedule:
        return None
    wall = sum(s.wall_seconds for s in summary.schedule)
    capacity = sum(s.workers * s.wall_seconds for s in summary.schedule)
    busy = sum(s.busy_seconds for s in summary.schedule)
    propose = sum(s.propose_seconds for s in summary.schedule)
    workers = list(dict.fromkeys(s.workers for s in summary.schedule))  # in session order
    share = f"{min(1.0, busy / capacity):.0%}" if capacity > 0 else "n/a"
    per = propose / max(1, sum(s.proposals for s in summary.schedule))
    setting = spec.optimizer.schedule + (": async" if spec.optimizer.schedule == "auto" else "")
    return (
        f"- evaluators (optimizer.schedule {setting}): {', then '.join(map(str, workers))}, busy {share} of the "
        f"search's wall time ({wall:.0f} s); the optimiser proposed for {propose:.0f} s ({per:.1f} s a proposal)"
    )


def prior_line(summary: RunSummary, spec: SearchSpec) -> str | None:
    """"- the GPs' prior mean (optimizer.prior_mean ...): batch 1 fitted (...), batch 2 worst (...)", from what each
    batch's GP-proposed trials journaled; None when no trial was proposed by a GP (or journaled before this)."""
    per_batch: dict[int, str] = {}
    for t in sorted([*summary.done, *summary.failed], key=lambda t: t.id):
        if t.prior is not None:
            per_batch.setdefault(t.batch, t.prior)
    if not per_batch:
        return None
    return f"- the GPs' prior mean (optimizer.prior_mean {spec.optimizer.prior_mean}): " + ", ".join(
        f"batch {b} {p}" for b, p in sorted(per_batch.items())
    )


def _sources_table(summary: RunSummary) -> list[str]:
    names = summary.objective_names
    lines = ["## Source models", "", "| model | " + " | ".join(names) + " | mean task | docs |",
             "|---" * (len(names) + 3) + "|"]
    for s in summary.sources:
        mean = summary.source_mean_task_score(s)
        if s.objectives is None or mean is None:
            lines.append(f"| {s.name} | failed: {s.error} |")
            continue
        lines.append(
            f"| {s.name} | " + " | ".join(f"{s.objectives[n]:.4g}" for n in names)
            + f" | {mean:.4f} | {_docs(summary.documents(s))} |"
        )
    return lines


def _front_table(summary: RunSummary) -> list[str]:
    names = summary.objective_names
    method = " method |" if summary.is_mixed else ""
    lines = ["## Pareto front", "",
             f"| trial | step |{method} " + " | ".join(names) + " | mean task | docs | parameters |",
             "|---" * (len(names) + 5 + summary.is_mixed) + "|"]
    for t in summary.pareto:
        assert t.objectives is not None
        params = ", ".join(f"{k}={v:.3f}" for k, v in t.params.items())
        cell = f" {summary.method(t)} |" if summary.is_mixed else ""
        lines.append(
            f"| {t.id} | {t.step} |{cell} " + " | ".join(f"{t.objectives[n]:.4g}" for n in names)
            + f" | {summary.mean_task_score(t):.4f} | {_docs(summary.documents(t))} | {params} |"
        )
    lines += ["", "docs: the documents each trial was scored on (a task shared by two objectives counts once)."]
    return lines


TRIAL_COLUMNS = ("trial", "batch", "step", "mean task", "docs", "")


def trial_columns(summary: RunSummary) -> tuple[str, ...]:
    """TRIAL_COLUMNS, with a method column after the step in a run that chose each trial's method."""
    return TRIAL_COLUMNS[:3] + ("method",) + TRIAL_COLUMNS[3:] if summary.is_mixed else TRIAL_COLUMNS


def trial_rows(summary: RunSummary) -> list[list[str]]:
    """One row of `trial_columns` per done trial: its mean task score, documents, and how it stands (chosen, on
    the front, breaking a take_home requirement, stopped early by evaluation.stages)."""
    best = summary.best()
    front = {t.id for t in summary.pareto}
    infeasible = summary.take_home.infeasible
    rows = []
    for t in summary.done:
        notes = ["chosen" if best is not None and t.id == best.id else "", "front" if t.id in front else ""]
        if t.id in infeasible:
            notes.append(f"infeasible: breaks {'; '.join(infeasible[t.id])}")
        if t.stopped:
            notes.append(f"stopped after {t.stages_scored} stage(s)")
        rows.append([
            str(t.id), str(t.batch), t.step, *([summary.method(t)] if summary.is_mixed else []),
            f"{summary.mean_task_score(t):.4f}", _docs(summary.documents(t)), ", ".join(n for n in notes if n),
        ])
    return rows


def _trials_list(summary: RunSummary) -> list[str]:
    columns = trial_columns(summary)
    lines = ["## Every trial", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in trial_rows(summary)]


def trials_table(summary: RunSummary, *, title: str = "Every trial") -> Any:
    """A rich Table of every done trial (the rows of `trial_rows`)."""
    from rich.table import Table

    table = Table(title=title)
    for name in trial_columns(summary):
        table.add_column(name, justify="left" if name in ("step", "method", "") else "right")
    for row in trial_rows(summary):
        table.add_row(*row)
    return table


def report_markdown(summary: RunSummary, spec: SearchSpec) -> str:
    """report.md: what to decide on first (the chosen merge against the sources), then the sources and the front."""
    lines = [f"# mmmo run: {spec.name}", "", *_lead_bullets(summary, spec), "", *chosen_merge_section(summary)]
    if summary.best() is not None:  # write_summaries draws it then
        lines += ["![Overview: the merges and the chosen one per task](overview.png)", ""]
    lines += [*_sources_table(summary), "", *_front_table(summary), "", *_trials_list(summary)]
    if summary.failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {t.id}: {t.error}" for t in summary.failed]
    if summary.done and len(summary.objective_names) >= 2:  # the images write_summaries draws
        lines += [
            "", "pareto.png shows every pairwise panel of the objectives; the front is over all of them at once.",
            "", "![Pareto front](pareto.png)",
        ]
    if summary.hypervolumes:
        lines += ["", "![Hypervolume](hypervolume.png)"]
    return "\n".join([*lines, ""])


def write_summaries(run_dir: Path, spec: SearchSpec, state: RunState) -> RunSummary:
    """Write pareto.csv/json/png, overview.png, hypervolume.png and report.md, each atomically."""
    summary = summarize_run(spec, state)
    atomic_write_text(run_dir / "pareto.json", pareto_json(summary))
    atomic_write_text(run_dir / "pareto.csv", pareto_csv(summary))
    if summary.done and len(summary.objective_names) >= 2:
        plot_pareto(summary, run_dir / "pareto.png")
    if summary.best() is not None:  # a trial scored in full to choose (not only trials stopped early)
        plot_overview(summary, run_dir / "overview.png")
    if summary.hypervolumes:
        plot_hypervolume(summary, spec, run_dir / "hypervolume.png")
    atomic_write_text(run_dir / "report.md", report_markdown(summary, spec))
    return summary


BEST_MARK, INFEASIBLE_MARK = " *", " ✗"  # the take-home merge, and a trial that breaks a take_home requirement
PARAMETERS_MIN_WIDTH = 110  # below this a parameters column squeezes every other column unreadable


def pareto_table(summary: RunSummary, *, title: str = "Pareto front", width: int | None = None) -> Any:
    """A rich Table of the front with the source models beside it.

    On a console narrower than PARAMETERS_MIN_WIDTH (`width`) the parameters column is left out and a
    caption says where to find them.
    """
    from rich.table import Table

    names = summary.objective_names
    show_params = width is None or width >= PARAMETERS_MIN_WIDTH
    table = Table(title=title)
    if not show_params:
        table.caption = "parameters: pareto.csv in the run folder, or `mmmo show RUN --json`"
    table.add_column("trial", justify="right")
    table.add_column("step")
    method = ["method"] if summary.is_mixed else []
    for name in method:
        table.add_column(name)
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("mean task", justify="right")
    table.add_column("docs", justify="right")  # documents scored: fewer where evaluation.stages stopped a trial
    if show_params:
        table.add_column("parameters")
    best, infeasible = summary.best(), summary.take_home.infeasible
    # Under take_home requirements the take-home merge can lie off the front (an infeasible trial dominates it).
    off_front = [best] if best is not None and best.id not in {t.id for t in summary.pareto} else []
    notes = [f"{BEST_MARK.strip()} the take-home merge"] if off_front or infeasible else []
    if infeasible:
        notes.append(f"{INFEASIBLE_MARK.strip()} breaks a take_home requirement")
    if notes:
        table.caption = "; ".join([*notes, *([table.caption] if table.caption else [])])
    for t in [*summary.pareto, *off_front]:
        assert t.objectives is not None
        params = " ".join(f"{k}={v:.2f}" for k, v in t.params.items())
        mark = BEST_MARK if best is not None and t.id == best.id else INFEASIBLE_MARK if t.id in infeasible else ""
        step = f"{t.step} (off the front)" if t in off_front else t.step
        table.add_row(
            f"{t.id}{mark}", step, *([summary.method(t)] if method else []), *[f"{t.objectives[n]:.4g}" for n in names],
            f"{summary.mean_task_score(t):.4f}", _docs(summary.documents(t)), *([params] if show_params else []),
        )
    for s in summary.sources:
        mean = summary.source_mean_task_score(s)
        if s.objectives is None or mean is None:
            error = s.error or ""
            cells = ["", "", error] if show_params else [error, ""]  # without parameters, in the mean column
            table.add_row(s.name, "source", *[""] * len(method), *["failed"] * len(names), *cells, style="dim")
            continue
        table.add_row(
            s.name, "source", *[""] * len(method), *[f"{s.objectives[n]:.4g}" for n in names], f"{mean:.4f}",
            _docs(summary.documents(s)), *([""] if show_params else []), style="dim",
        )
    return table
