"""Rebuild chosen merges of a run as Hugging Face folders: deterministic from the journal (same seed, same tensors)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmmo.config import SearchSpec
from mmmo.errors import MmmoError
from mmmo.search.space import SearchSpace
from mmmo.trial import Trial

if TYPE_CHECKING:
    from mmmo.merge.merger import Merger
    from mmmo.merge.recipe import MergeRecipe
    from mmmo.report import RunSummary


def trial_arrays(spec: SearchSpec, trial: Trial) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (n_models, layer_groups) weights and densities of a trial, from its unit-cube vector."""
    return SearchSpace.from_spec(spec).from_unit(torch.tensor(trial.x, dtype=torch.float64))


def trial_recipe(spec: SearchSpec, trial: Trial) -> MergeRecipe:
    """The mergekit-format recipe that reproduces a trial's merge."""
    from mmmo.merge.recipe import MergeRecipe

    weights, densities = trial_arrays(spec, trial)
    return MergeRecipe.from_arrays(
        spec.base_model,
        [m.path for m in spec.models],
        spec.merge.method,
        weights,
        densities,
        normalize=spec.merge.normalize,
        lambda_=spec.merge.lambda_,
        dtype=spec.merge.dtype,
        seed=spec.merge.seed,
    )


def export_trials(
    spec: SearchSpec,
    trials: list[Trial],
    out_root: Path,
    merger: Merger | None = None,
    *,
    device: str | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Write each trial's merge to `out_root/trial-N` (model card and mergekit_config.yml included)."""
    from mmmo.evaluate import build_merger
    from mmmo.merge.save import save_merged
    from mmmo.objectives.device import resolve_device

    if not trials:
        return []
    if merger is None:
        merger = build_merger(spec, resolve_device(device or spec.evaluation.device))
    out_root.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in trials:
        weights, densities = trial_arrays(spec, t)
        objectives = ", ".join(f"{k} {v:.4g}" for k, v in (t.objectives or {}).items())
        paths.append(
            save_merged(
                merger.merged_state_dict(weights, densities),
                out_root / f"trial-{t.id}",
                base_path=merger.base_path,
                recipe=trial_recipe(spec, t),
                overwrite=overwrite,
                note=f"mmmo run {spec.name!r}, trial {t.id} (batch {t.batch}, {t.step}): {objectives}",
            )
        )
    return paths


def select_trials(summary: RunSummary, *, trial: int | None, best: str | None) -> list[Trial]:
    """The trials an export asks for: one id, the best on one objective, or the whole front."""
    if trial is not None:
        found = [t for t in summary.done if t.id == trial]
        if not found:
            done_ids = [t.id for t in summary.done]
            raise MmmoError(f"trial {trial} is not a finished trial of this run (done: {done_ids})")
        return found
    if best is not None:
        if best not in summary.objective_names:
            raise MmmoError(f"--best {best!r}: not an objective of this run ({', '.join(summary.objective_names)})")
        chosen = summary.best(best)
        if chosen is None:
            raise MmmoError("no finished trial to export")
        return [chosen]
    return summary.pareto


def export_from_run(
    run_dir: str | Path, out: str | Path, *, trial: int | None = None, best: str | None = None,
    pareto: bool = False, device: str | None = None,
) -> list[Path]:
    """`mmmo export`: rebuild merges chosen from a run folder into `out`."""
    from mmmo.api import load_run

    spec, _, summary = load_run(run_dir)
    chosen = select_trials(summary, trial=trial, best=best)
    return export_trials(spec, chosen, Path(out), device=device, overwrite=False)
