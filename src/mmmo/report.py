"""Summaries of a run: the Pareto front as CSV/JSON/PNG, the hypervolume curve, report.md and the rich table."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmmo.config import SearchSpec
from mmmo.run_store import RunState, RunStore, SourceScore, atomic_write_bytes_via, atomic_write_text
from mmmo.search.pareto import pareto_mask
from mmmo.trial import Trial


@dataclass
class RunSummary:
    """The done trials of a run, its Pareto front and the source models beside it."""

    objective_names: list[str]
    task_names: list[str]
    done: list[Trial]
    failed: list[Trial]
    pareto: list[Trial]
    sources: list[SourceScore]
    hypervolumes: dict[int, float]
    ref_point: list[float] | None
    budget: int

    def mean_task_score(self, trial: Trial) -> float:
        assert trial.objectives is not None
        return sum(trial.objectives[n] for n in self.task_names) / len(self.task_names)

    def objective_matrix(self, trials: list[Trial]) -> torch.Tensor:
        """`[len(trials), n_objectives]` float64: each done trial's objectives in the run's objective order."""
        return objective_matrix(trials, self.objective_names)

    def best(self, objective: str | None = None) -> Trial | None:
        """The done trial with the highest value of `objective` (default: the mean task score).

        Ties are broken by dominance: of the tied trials, only one that no other done trial dominates on all
        objectives can be best (the lowest id of those), so "best" is always on the Pareto front.
        """
        if not self.done:
            return None

        def key(t: Trial) -> float:
            return self.mean_task_score(t) if objective is None else t.objectives[objective]  # type: ignore[index]

        # Exact equality: rounding is monotone, so a trial that dominates another never averages an ulp lower.
        top = max(key(t) for t in self.done)
        tied = [t for t in self.done if key(t) == top]
        if len(tied) == 1:
            return tied[0]
        # A trial that dominates a tied one scores at least as high on the key, so it is tied too: the tied
        # trials that none of them dominates are exactly the tied trials on the whole front.
        front = [t for t, keep in zip(tied, pareto_mask(self.objective_matrix(tied)).tolist()) if keep]
        return min(front, key=lambda t: t.id)


def objective_matrix(trials: list[Trial], names: list[str]) -> torch.Tensor:
    """`[len(trials), len(names)]` float64: the trials' objectives (every trial done) in `names` order."""
    return torch.tensor([[t.objectives[n] for n in names] for t in trials], dtype=torch.float64)  # type: ignore[index]


def summarize_run(spec: SearchSpec, state: RunState) -> RunSummary:
    """The run's done and failed trials, its Pareto front over the done ones, and its source models."""
    names = [o.name for o in spec.objectives]
    done = [t for t in state.trials if t.status == "done" and t.objectives is not None]
    pareto: list[Trial] = []
    if done:
        mask = pareto_mask(objective_matrix(done, names))
        pareto = [t for t, keep in zip(done, mask.tolist()) if keep]
    return RunSummary(
        objective_names=names,
        task_names=[o.name for o in spec.task_objectives],
        done=done,
        failed=[t for t in state.trials if t.status == "failed"],
        pareto=sorted(pareto, key=lambda t: t.id),
        sources=state.sources,
        hypervolumes=state.hypervolumes,
        ref_point=state.ref_point,
        budget=spec.optimizer.budget,
    )


def load_run(run_dir: str | Path) -> tuple[SearchSpec, RunState, RunSummary]:
    """Read a run folder without touching models: its spec, journal state and summary."""
    spec, state = RunStore(Path(run_dir)).read_run()
    return spec, state, summarize_run(spec, state)


def _pareto_records(summary: RunSummary) -> list[dict[str, Any]]:
    return [
        {
            "trial": t.id,
            "batch": t.batch,
            "step": t.step,
            "objectives": t.objectives,
            "mean_task_score": summary.mean_task_score(t),
            "params": t.params,
        }
        for t in summary.pareto
    ]


def pareto_json(summary: RunSummary) -> str:
    data = {
        "objectives": summary.objective_names,
        "ref_point": summary.ref_point,
        "hypervolume": summary.hypervolumes.get(max(summary.hypervolumes)) if summary.hypervolumes else None,
        "evaluations": len(summary.done) + len(summary.failed),
        "budget": summary.budget,
        "pareto": _pareto_records(summary),
        "sources": [{"name": s.name, "objectives": s.objectives, "error": s.error} for s in summary.sources],
    }
    return json.dumps(data, indent=2)


def pareto_csv(summary: RunSummary) -> str:
    param_names = sorted({k for t in summary.pareto for k in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "batch", "step", *summary.objective_names, "mean_task_score", *param_names])
    for t in summary.pareto:
        assert t.objectives is not None
        writer.writerow(
            [t.id, t.batch, t.step]
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


def report_markdown(summary: RunSummary, spec: SearchSpec) -> str:
    names = summary.objective_names
    lines = [
        f"# mmmo run: {spec.name}",
        "",
        f"- strategy: {spec.optimizer.strategy}, method: {spec.merge.method}, granularity: {spec.merge.granularity}",
        f"- evaluations: {len(summary.done)} done, {len(summary.failed)} failed, budget {summary.budget}",
        f"- reference point: {_fmt_list(summary.ref_point)}",
    ]
    if summary.hypervolumes:
        last = max(summary.hypervolumes)
        lines.append(f"- hypervolume after batch {last}: {summary.hypervolumes[last]:.6g}")
    best = summary.best()
    if best is not None:
        lines.append(f"- best mean task score: trial {best.id} ({summary.mean_task_score(best):.4f})")
        for t in summary.done:
            if t.step == "standard":  # the recipe a user would try by hand, evaluated in the initial design
                gain = summary.mean_task_score(best) - summary.mean_task_score(t)
                lines.append(
                    f"- standard recipe: trial {t.id} ({summary.mean_task_score(t):.4f}); "
                    f"the best merge is {gain:+.4f} beyond it"
                )
    lines += ["", "## Source models", "", "| model | " + " | ".join(names) + " | mean task |",
              "|---" * (len(names) + 2) + "|"]
    for s in summary.sources:
        if s.objectives is None:
            lines.append(f"| {s.name} | failed: {s.error} |")
            continue
        mean = sum(s.objectives[n] for n in summary.task_names) / len(summary.task_names)
        lines.append(f"| {s.name} | " + " | ".join(f"{s.objectives[n]:.4g}" for n in names) + f" | {mean:.4f} |")
    lines += ["", "## Pareto front", "", "| trial | step | " + " | ".join(names) + " | mean task | parameters |",
              "|---" * (len(names) + 4) + "|"]
    for t in summary.pareto:
        assert t.objectives is not None
        params = ", ".join(f"{k}={v:.3f}" for k, v in t.params.items())
        lines.append(
            f"| {t.id} | {t.step} | " + " | ".join(f"{t.objectives[n]:.4g}" for n in names)
            + f" | {summary.mean_task_score(t):.4f} | {params} |"
        )
    if summary.failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {t.id}: {t.error}" for t in summary.failed]
    lines += ["", "![Pareto front](pareto.png)", "", "![Hypervolume](hypervolume.png)", ""]
    return "\n".join(lines)


def write_summaries(run_dir: Path, spec: SearchSpec, state: RunState) -> RunSummary:
    """Write pareto.csv/json/png, hypervolume.png and report.md, each atomically."""
    summary = summarize_run(spec, state)
    atomic_write_text(run_dir / "pareto.json", pareto_json(summary))
    atomic_write_text(run_dir / "pareto.csv", pareto_csv(summary))
    if summary.done and len(summary.objective_names) >= 2:
        plot_pareto(summary, run_dir / "pareto.png")
    if summary.hypervolumes:
        plot_hypervolume(summary, spec, run_dir / "hypervolume.png")
    atomic_write_text(run_dir / "report.md", report_markdown(summary, spec))
    return summary


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
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("mean task", justify="right")
    if show_params:
        table.add_column("parameters")
    best = summary.best()
    for t in summary.pareto:
        assert t.objectives is not None
        params = " ".join(f"{k}={v:.2f}" for k, v in t.params.items())
        mark = " *" if best is not None and t.id == best.id else ""
        table.add_row(
            f"{t.id}{mark}", t.step, *[f"{t.objectives[n]:.4g}" for n in names],
            f"{summary.mean_task_score(t):.4f}", *([params] if show_params else []),
        )
    for s in summary.sources:
        if s.objectives is None:
            error = s.error or ""
            cells = ["", error] if show_params else [error]  # without parameters, in the mean column
            table.add_row(s.name, "source", *["failed"] * len(names), *cells, style="dim")
            continue
        mean = sum(s.objectives[n] for n in summary.task_names) / len(summary.task_names)
        table.add_row(
            s.name, "source", *[f"{s.objectives[n]:.4g}" for n in names], f"{mean:.4f}",
            *([""] if show_params else []), style="dim",
        )
    return table
