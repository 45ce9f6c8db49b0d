"""Rebuild chosen merges of a run as Hugging Face folders: deterministic from the journal (same seed, same tensors)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmmo.evaluation.evaluator import build_merger, local_model_folder, merge_dtype
from mmmo.objectives.device import resolve_device
from mmmo.optimizer.pareto import hypervolume_contributions, infer_ref_point
from mmmo.optimizer.space import SearchSpace
from mmmo.results.summary import RunSummary, load_run
from mmmo.results.take_home import NO_REQUIREMENTS_HINT, preference_from
from mmmo.run.lock import run_lock
from mmmo.run.records import Trial
from mmmo.runtime.diskspace import check_free_space, disk_full_as_error
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import SearchSpec

if TYPE_CHECKING:
    from mmmo.merge.merger import Merger
    from mmmo.merge.recipes.recipe import MergeRecipe


def trial_arrays(spec: SearchSpec, trial: Trial) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (n_models, layer_groups) weights and densities of a trial, from its unit-cube vector."""
    return SearchSpace.from_spec(spec).from_unit(torch.tensor(trial.x, dtype=torch.float64))


def trial_method(spec: SearchSpec, trial: Trial) -> str:
    """The method a trial merged with: its own in a search that chooses it, else the spec's one method (what a
    trial journaled before methods could be listed merged with)."""
    return trial.method_or(spec.merge.methods[0])


def trial_parameters(spec: SearchSpec, trial: Trial) -> dict[str, float]:
    """The searched method-level parameters of a trial's method (e.g. della's epsilon), by mergekit name."""
    return SearchSpace.from_spec(spec).method_parameters(torch.tensor(trial.x, dtype=torch.float64))


def trial_recipe(spec: SearchSpec, trial: Trial) -> MergeRecipe:
    """The mergekit-format recipe that reproduces a trial's merge, with the trial's method."""
    from mmmo.merge.recipes.recipe import MergeRecipe

    weights, densities = trial_arrays(spec, trial)
    extra = {"parameters": dict(parameters)} if (parameters := trial_parameters(spec, trial)) else {}
    return MergeRecipe.from_arrays(
        spec.base_model,
        [m.path for m in spec.models],
        trial_method(spec, trial),
        weights,
        densities,
        normalize=spec.merge.normalize,
        lambda_=spec.merge.lambda_,
        dtype=spec.merge.dtype,
        seed=spec.merge.seed,
        **extra,
    )


def merged_model_bytes(spec: SearchSpec, device: torch.device) -> int:
    """Bytes one exported merge takes on disk: every tensor of the base in the merge dtype, plus its small files.

    Read from the base's file headers, so it is known before any model is loaded.
    """
    from mmmo.merge.recipes.save import AUX_FILES
    from mmmo.merge.sources.checkpoint import open_checkpoint

    base = Path(local_model_folder(spec.base_model))
    shapes = open_checkpoint(base, allow_pickle=spec.merge.allow_pickle).shapes().values()
    itemsize = torch.empty((), dtype=merge_dtype(spec, device)).element_size()
    weights = sum(math.prod(shape) for shape in shapes) * itemsize
    small = sum((base / f).stat().st_size for f in (*AUX_FILES, "config.json") if (base / f).is_file())
    return weights + small


def export_trials(
    spec: SearchSpec,
    trials: list[Trial],
    out_root: Path,
    merger: Merger | None = None,
    *,
    device: str | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Write each trial's merge to `out_root/trial-N` (model card and mergekit_config.yml included).

    Checks free space first (one line, needed against free, before anything is loaded or written). A disk that
    fills up anyway ends in one line too: the trial being written leaves no folder behind, earlier ones stay.
    """
    from mmmo.merge.recipes.save import save_merged

    if not trials:
        return []
    dev = merger.device if merger is not None else resolve_device(device or spec.evaluation.device)
    existing = sum(1 for t in trials if (out_root / f"trial-{t.id}").is_dir())
    # A folder that is replaced is written beside the old one first, so it needs the room too.
    check_free_space(
        out_root, len(trials) * merged_model_bytes(spec, dev), f"{len(trials)} merged model(s)",
        "free some space or export fewer (mmmo export --trial N, or a smaller output.export_limit)"
        + (f"; {existing} of them already exist there" if existing else ""),
    )
    if merger is None:
        merger = build_merger(spec, dev)
    out_root.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in trials:
        weights, densities = trial_arrays(spec, t)
        objectives = ", ".join(f"{k} {v:.4g}" for k, v in (t.objectives or {}).items())
        folder = out_root / f"trial-{t.id}"
        with disk_full_as_error(
            folder,
            "its partial folder was removed"
            + (f" (exported before it: {', '.join(p.name for p in paths)})" if paths else "")
            + "; free some space and export again",
        ):
            paths.append(
                save_merged(
                    merger.merged_state_dict(
                        weights, densities, trial_parameters(spec, t) or None,
                        method=trial_method(spec, t) if spec.merge.is_mixed else None,
                    ),
                    folder,
                    base_path=merger.base_path,
                    recipe=trial_recipe(spec, t),
                    overwrite=overwrite,
                    note=f"mmmo run {spec.name!r}, trial {t.id} (batch {t.batch}, {t.step}): {objectives}",
                )
            )
    return paths


def pareto_by_contribution(summary: RunSummary) -> list[Trial]:
    """The Pareto front, largest hypervolume contribution first (ties: higher mean task score, then lower id).

    The contribution is the hypervolume the front loses without that trial, above the run's reference point (or,
    before one was fixed, the one inferred from the done trials).
    """
    front = summary.pareto
    if len(front) <= 1:
        return list(front)
    if summary.ref_point is not None:
        ref = torch.tensor(summary.ref_point, dtype=torch.float64)
    else:
        ref = infer_ref_point(summary.objective_matrix(summary.done))
    contribution = dict(zip((t.id for t in front), hypervolume_contributions(summary.objective_matrix(front), ref)))
    return sorted(front, key=lambda t: (-contribution[t.id], -summary.mean_task_score(t), t.id))


def select_trials(
    summary: RunSummary, *, trial: int | None = None, best: str | None = None, pareto: bool = False,
    limit: int | None = None, allow_infeasible: bool = False, note: Callable[[str], None] | None = None,
) -> list[Trial]:
    """The trials an export asks for: one id, the best on one objective, up to `limit` of the front (largest
    hypervolume contribution first; without `allow_infeasible` only trials that meet every take_home requirement),
    or by default the take-home merge (`RunSummary.take_home`).

    When no merge meets every requirement: MmmoError (one line) unless `allow_infeasible`, which takes the best by
    the preference ignoring them and says so through `note`.
    """
    if trial is not None:
        found = [t for t in summary.done if t.id == trial]
        if not found:
            done_ids = [t.id for t in summary.done]
            raise MmmoError(f"trial {trial} is not a finished trial of this run (done: {done_ids})")
        return found
    if pareto:
        ranked = pareto_by_contribution(summary)
        if not allow_infeasible:
            ranked = [t for t in ranked if t.id not in summary.take_home.infeasible]
        return ranked if limit is None else ranked[:limit]
    if best is not None:
        if best not in summary.objective_names:
            raise MmmoError(f"--best {best!r}: not an objective of this run ({', '.join(summary.objective_names)})")
        top = summary.best(best)
        return [] if top is None else [top]  # None: nothing scored in full (caught below)
    choice = summary.take_home
    if choice.trial is not None:
        return [choice.trial]
    if choice.none_qualifies is None:
        raise MmmoError("no finished trial to export")
    if not allow_infeasible:
        raise MmmoError(f"{choice.none_qualifies} Nothing exported: {NO_REQUIREMENTS_HINT}.")
    ignoring = summary.take_home_among(summary.scored_in_full, cat_dims=summary.cat_dims, ignore_requirements=True)
    assert ignoring.trial is not None
    if note is not None:
        note(f"{choice.none_qualifies} Exporting trial {ignoring.trial.id}, chosen by {ignoring.how}.")
    return [ignoring.trial]


def export_from_run(
    run_dir: str | Path, out: str | Path, *, trial: int | None = None, best: str | None = None,
    pareto: bool = False, limit: int | None = None, device: str | None = None,
    weights: str | None = None, require: Sequence[str] | None = None, choose: str | None = None,
    allow_infeasible: bool = False, note: Callable[[str], None] | None = None,
) -> list[Path]:
    """`mmmo export`: rebuild merges chosen from a run folder into `out` (default: the take-home merge).

    `weights` ("arith=2,reverse=1"), `require` (replacing the spec's requirements) and `choose` re-choose with
    another take-home preference, checked as the spec's `take_home:` is; nothing is re-run. Writing into the run
    folder itself (e.g. `--out RUN/models`) takes the run's lock, as a search does.
    """
    spec, _, summary = load_run(run_dir)
    if (weights, require, choose) != (None, None, None):
        preference = preference_from(
            spec.take_home, [o.name for o in spec.objectives], spec.model_names, spec.evaluation.evaluate_sources,
            weights=weights, require=require, choose=choose,
        )
        summary = summary.rechoose(preference)
    chosen = select_trials(
        summary, trial=trial, best=best, pareto=pareto, limit=limit, allow_infeasible=allow_infeasible, note=note
    )
    if not chosen and pareto and summary.pareto:
        raise MmmoError(
            f"no trial of the Pareto front meets every take_home requirement ({', '.join(summary.take_home.requirements)})"
            "; nothing exported: --allow-infeasible exports them anyway"
        )
    if not chosen:
        raise MmmoError("no finished trial to export")
    run, target = Path(run_dir).resolve(), Path(out).expanduser().resolve()
    if target == run or run in target.parents:
        with run_lock(run, "mmmo export"):
            return export_trials(spec, chosen, target, device=device, overwrite=False)
    return export_trials(spec, chosen, target, device=device, overwrite=False)
