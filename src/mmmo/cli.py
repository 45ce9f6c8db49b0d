"""The `mmmo` command line: parses arguments and calls the library (see `mmmo.api`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from mmmo.runtime.errors import MmmoError

app = typer.Typer(
    help="Find the best way to merge fine-tuned LLMs: multi-objective Bayesian optimisation (MM-MO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}
err_console = Console(stderr=True)
T = TypeVar("T")


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on errors, and what --verbose shows.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show the libraries' progress bars and the numerical warnings mmmo expects."
        ),
    ] = False,
) -> None:
    from mmmo.runtime.quiet import quiet_libraries

    _state["debug"] = debug
    # Quiet by default: a command's own lines are what a user reads. Lasts as long as the command runs.
    ctx.with_resource(quiet_libraries(verbose=debug or verbose))


def _guard(fn: Callable[[], T], run_dir_hint: str | None = None) -> T:
    """Run a command body: user errors become one line on stderr and exit code 2.

    SIGTERM (Slurm, Kubernetes, `timeout`) unwinds like Ctrl-C: the journal stays whole, Ray is shut down, the run
    folder's lock and partial exports are released, and the same hint is printed; the exit status is 143 (130 for
    Ctrl-C), with --debug too, which prints the traceback first.
    """
    from mmmo.runtime.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return fn()
    except MmmoError as err:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as stop:
        if _state["debug"]:
            import traceback  # --debug shows where it stopped; the exit status stays what schedulers act on

            traceback.print_exc()
        hint = f"; continue with: mmmo resume {run_dir_hint}" if run_dir_hint else ""
        if isinstance(stop, Terminated):
            saved = ": every finished evaluation is saved" if run_dir_hint else ""
            err_console.print(f"terminated (SIGTERM){saved}{hint}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_TERMINATED) from None
        err_console.print(f"interrupted: every finished evaluation is saved{hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


ConfigArg = Annotated[Path, typer.Argument(help="Search spec (YAML).", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="Run folder (output.dir of a search).", show_default=False)]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Parallel evaluators (Ray when > 1, or one under optimizer.schedule async).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the final Pareto front as JSON on stdout.")]


def _finish_search(result: Any, as_json: bool, quiet: bool) -> None:
    from mmmo.results.report import pareto_json, pareto_table

    if as_json:
        sys.stdout.write(pareto_json(result.summary) + "\n")
        return
    if not quiet:
        console = Console()
        console.print(
            pareto_table(result.summary, title=f"Pareto front — {result.spec.name}", width=console.width)
        )
        console.print(f"run folder: {result.run_dir}  (report.md, overview.png, pareto.csv, pareto.png, trials.jsonl)")
        for p in result.exported:
            console.print(f"exported: {p}")
        none_qualifies = result.summary.take_home.none_qualifies
        if none_qualifies is not None:
            console.print(f"{none_qualifies} Nothing exported.", highlight=False, soft_wrap=True)
        front = len(result.summary.pareto)
        if result.spec.output.export == "pareto" and 0 < len(result.exported) < front:
            console.print(
                f"exported the {len(result.exported)} of {front} Pareto trials with the largest hypervolume "
                f"contribution (output.export_limit); more with: mmmo export {result.run_dir} --pareto --limit "
                f"{front} --out DIR",
                highlight=False,
            )


@app.command()
def search(
    config: ConfigArg,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over (the old run folder is kept as a backup).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --fresh.")] = False,
    workers: WorkersOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Search merge configurations for a spec; continues an existing run folder."""
    from mmmo import api
    from mmmo.run.store import RunStore
    from mmmo.spec.schema import load_spec

    spec = _guard(lambda: load_spec(config))
    if fresh and RunStore(spec.run_dir).exists and not yes:
        if not sys.stdin.isatty():
            err_console.print("error: --fresh on an existing run needs --yes when not interactive")
            raise typer.Exit(2)
        typer.confirm(f"Start {spec.run_dir} over? The old folder is kept as a .bak copy", abort=True)
    result = _guard(
        lambda: api.search(spec, fresh=fresh, workers=workers, device=device, show_progress=not (quiet or as_json)),
        run_dir_hint=str(spec.run_dir),
    )
    _finish_search(result, as_json, quiet)


@app.command()
def resume(
    run_dir: RunDirArg, workers: WorkersOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Move unreadable journal lines to a side file first; their trials are run again."
        ),
    ] = False,
) -> None:
    """Continue an interrupted search from the spec stored in its run folder (moved or copied folders too)."""
    from mmmo import api

    if repair:
        report = _guard(lambda: api.repair(run_dir))
        moved = (
            f"moved {report.moved} unreadable line(s) to {report.side_file}; their trials are run again"
            if report.moved else "nothing to repair: every line is readable"
        )
        err_console.print(f"repair: {moved}", highlight=False, soft_wrap=True)
    result = _guard(
        lambda: api.resume(run_dir, workers=workers, device=device, show_progress=not (quiet or as_json)),
        run_dir_hint=str(run_dir),
    )
    _finish_search(result, as_json, quiet)


@app.command()
def validate(
    config: ConfigArg,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", "--fields-only",
            help="Check the fields only: no model paths, hub ids, tensor headers or lm-eval tasks.",
        ),
    ] = False,
) -> None:
    """Check a spec (fields, paths, model headers, tasks) without loading weights."""
    from mmmo.spec.validate import validate_spec_file

    lines = _guard(lambda: validate_spec_file(config, offline=offline))
    for line in lines:
        typer.echo(line)


@app.command()
def show(
    run_dir: RunDirArg,
    as_json: JsonOpt = False,
    every: Annotated[
        bool, typer.Option("--all", help="Also list every trial: mean task score, documents, how it stands.")
    ] = False,
) -> None:
    """Show a run's Pareto front with each trial's objectives, documents scored and parameters."""
    from mmmo.results.report import pareto_json, pareto_table, stopped_line, trials_table
    from mmmo.results.summary import load_run

    spec, state, summary = _guard(lambda: load_run(run_dir))
    _guard(lambda: summary.take_home)  # a requirement on a source the run has not scored: one line, not a traceback
    if as_json:
        sys.stdout.write(pareto_json(summary) + "\n")
        return
    console = Console()
    if every:
        console.print(trials_table(summary, title=f"Every trial — {spec.name}"))
    console.print(pareto_table(summary, title=f"Pareto front — {spec.name}", width=console.width))
    done, failed = len(summary.done), len(summary.failed)
    pending = sum(t.status in ("proposed", "partial") for t in state.trials)
    console.print(f"{done} done, {failed} failed, {pending} pending of a budget of {summary.budget}")
    stopped = stopped_line(summary)
    if stopped is not None:
        console.print(stopped.removeprefix("- "), highlight=False, soft_wrap=True)
    take_home = summary.take_home
    line = take_home.none_qualifies or (
        f"take-home merge (*): trial {take_home.trial.id}, {take_home.how}" if take_home.trial is not None else None
    )
    if line is not None:
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def export(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for the exported model(s).")],
    trial: Annotated[int | None, typer.Option("--trial", help="Export this trial id.")] = None,
    best: Annotated[str | None, typer.Option("--best", help="Export the best trial on this objective.")] = None,
    pareto: Annotated[
        bool, typer.Option("--pareto", help="Export trials of the Pareto front, largest hypervolume share first.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="With --pareto: at most this many merges.")] = 3,
    device: DeviceOpt = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Re-choose with these weights, e.g. 'arith=2,reverse=1'.")
    ] = None,
    require: Annotated[
        list[str] | None,
        typer.Option("--require", help="Re-choose with this requirement instead of the spec's, e.g. 'arith>=0.6' "
                     "or 'sort >= base - 0.02' (repeatable)."),
    ] = None,
    choose: Annotated[
        str | None, typer.Option("--choose", help="Re-choose by 'posterior' (default) or 'observed' scores.")
    ] = None,
    allow_infeasible: Annotated[
        bool,
        typer.Option("--allow-infeasible", help="When no merge meets every requirement, export the best by the "
                     "preference ignoring them (with --pareto: the front's infeasible trials too)."),
    ] = False,
) -> None:
    """Rebuild chosen merges of a run as Hugging Face folders (same seed, same tensors).

    Without --trial, --best or --pareto: the take-home merge (the spec's take_home preference, or the one
    --weights, --require and --choose give).
    """
    from mmmo.results.export import export_from_run

    if sum(x is not None and x is not False for x in (trial, best, pareto)) > 1:
        err_console.print("error: give at most one of --trial N, --best OBJECTIVE, --pareto")
        raise typer.Exit(2)
    paths = _guard(
        lambda: export_from_run(
            run_dir, out, trial=trial, best=best, pareto=pareto, limit=limit, device=device, weights=weights,
            require=require, choose=choose, allow_infeasible=allow_infeasible,
            note=lambda line: err_console.print(line, highlight=False, soft_wrap=True),
        )
    )
    for p in paths:
        typer.echo(f"exported: {p}")


@app.command()
def rescore(
    run_dir: RunDirArg,
    model_dir: Annotated[Path, typer.Argument(help="A model folder, e.g. an exported merge.", show_default=False)],
    trial: Annotated[
        int | None, typer.Option("--trial", help="Compare with this trial (default: the folder's trial-N).")
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Score a model folder on the run's documents (the same ones every candidate saw) and compare with its trial."""
    from mmmo.results.rescore import rescore_model

    rows = _guard(lambda: rescore_model(run_dir, model_dir, trial=trial, device=device))
    for r in rows:
        line = f"{r.objective}: {r.value:.4g} on {r.n_examples} documents"
        if r.recorded is not None:
            line += f" (journal: {r.recorded:.4g}"
            line += {True: ", every document the same)", False: ", some documents differ)", None: ")"}[r.same_outcomes]
        typer.echo(line)


@app.command()
def merge(
    recipe: Annotated[Path, typer.Argument(help="A mergekit-format recipe (YAML).", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Output folder (Hugging Face format).", show_default=False)],
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for DARE masks.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading .bin pickles.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N.")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
) -> None:
    """Run one merge from a mergekit YAML recipe and save it."""
    from mmmo.merge.recipes.recipe_run import run_recipe

    path = _guard(
        lambda: run_recipe(recipe, out_dir, seed=seed, allow_pickle=allow_pickle, device=device, overwrite=overwrite)
    )
    typer.echo(f"merged model written to {path}")


@app.command()
def demo(
    dir: Annotated[Path, typer.Option("--dir", help="Where to build the demo.")] = Path("demo"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached.")] = False,
) -> None:
    """Build the CPU demo: a tiny base model, three experts, local lm-eval tasks and demo.yaml."""
    from mmmo.demo import build_demo
    from mmmo.runtime.environment import use_project_cache

    use_project_cache(Path.cwd())
    paths = _guard(lambda: build_demo(dir, force=force, progress=lambda m: err_console.print(f"[dim]{m}[/dim]")))
    typer.echo(json.dumps({"base": str(paths.base), "config": str(paths.config)}))


def main() -> None:  # pragma: no cover - console-script entry point
    app()
