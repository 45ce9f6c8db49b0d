"""Score a model folder (an exported merge) on a run's documents, exactly as the run scored its candidates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mmmo.evaluation.evaluator import build_objectives, merge_dtype
from mmmo.objectives.device import resolve_device
from mmmo.results.summary import load_run
from mmmo.run.documents import decode_outcomes, plan_differences
from mmmo.run.records import Trial
from mmmo.runtime.environment import use_project_cache
from mmmo.runtime.errors import MmmoError


@dataclass(frozen=True)
class RescoredObjective:
    """One task objective of a re-scored model, beside what the run's journal holds for the trial it was."""

    objective: str
    value: float
    stderr: float | None
    n_examples: int
    recorded: float | None  # the trial's journaled value (None: no trial compared)
    # Whether every per-document outcome equals the trial's (on the documents the trial was scored on);
    # None where there is nothing to compare.
    same_outcomes: bool | None


def trial_of_folder(folder: Path) -> int | None:
    """The trial id an exported folder is named after (`trial-N`), else None."""
    m = re.fullmatch(r"trial-(\d+)", folder.name)
    return int(m.group(1)) if m else None


def rescore_model(
    run_dir: str | Path, model_dir: str | Path, *, trial: int | None = None, device: str | None = None
) -> list[RescoredObjective]:
    """Score the model in `model_dir` on every document the run scores, and compare with trial `trial`
    (default: the one the folder is named after, `trial-N`). MmmoError when the documents differ from the run's."""
    from mmmo.merge.sources.checkpoint import open_checkpoint
    from mmmo.merge.sources.live_model import load_live_model, load_tokenizer

    use_project_cache(Path.cwd())  # datasets and models from the project's caches, as a search reads them
    spec, state, summary = load_run(run_dir)
    folder = Path(model_dir).expanduser()
    trial_id = trial if trial is not None else trial_of_folder(folder)
    recorded = next((t for t in summary.done if t.id == trial_id), None)
    if trial is not None and recorded is None:
        raise MmmoError(f"trial {trial} is not a finished trial of {run_dir}")
    objectives = build_objectives(spec, stages=False)
    if state.documents is not None:
        changed = plan_differences(state.documents, objectives.plan)
        if changed:
            raise MmmoError(f"the run's documents cannot be scored again: {'; '.join(changed)}")
    dev = resolve_device(device or spec.evaluation.device)
    checkpoint = open_checkpoint(folder, allow_pickle=spec.merge.allow_pickle)
    model = load_live_model(checkpoint, merge_dtype(spec, dev), dev, trust_remote_code=spec.merge.trust_remote_code)
    tokenizer, why = load_tokenizer(folder, trust_remote_code=spec.merge.trust_remote_code)
    if tokenizer is None:
        raise MmmoError(why or f"no tokenizer in {folder}")
    objectives.bind(model, tokenizer, dev)
    scores = objectives.evaluate()
    return [
        RescoredObjective(
            objective=name,
            value=s.value,
            stderr=s.stderr,
            n_examples=s.n_examples,
            recorded=None if recorded is None or recorded.objectives is None else recorded.objectives[name],
            same_outcomes=_same_outcomes(recorded, name, s.outcomes),
        )
        for name, s in scores.items()
    ]


def _same_outcomes(trial: Trial | None, name: str, outcomes: dict[str, list[float]] | None) -> bool | None:
    if trial is None or outcomes is None or name not in trial.outcomes:
        return None
    kept = {leaf: decode_outcomes(v) for leaf, v in trial.outcomes[name].items()}
    return kept.keys() == outcomes.keys() and all(outcomes[leaf][: len(v)] == v for leaf, v in kept.items())
