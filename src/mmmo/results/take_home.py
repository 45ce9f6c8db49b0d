"""The merge a user takes home: the spec's `take_home:` preference resolved against the run's scored sources into
a `optimizer.target.Target`, and the one trial that report.md, `mmmo show` and `mmmo export` all take home."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mmmo.optimizer.history import done_variances
from mmmo.optimizer.target import MIN_POINTS_FOR_POSTERIOR, Target, choose_take_home
from mmmo.run.records import SourceScore, Trial
from mmmo.runtime.errors import MmmoError, validation_message
from mmmo.spec.take_home import Requirement, TakeHomeSpec

NO_REQUIREMENTS_HINT = "mmmo export --allow-infeasible takes the best by the preference ignoring them"


@dataclass(frozen=True)
class TakeHomeChoice:
    """The trial to take home (None: no trial scored in full, or none meets every requirement) and why.

    `how`: how it was chosen, in words. `infeasible`: trial id → the requirements its observed scores break.
    `requirements`: each requirement with its bound in raw units (a relative one read from its source's score).
    """

    trial: Trial | None
    how: str
    target: Target
    preference: str  # "the mean task score", or the weighted mean it is
    requirements: tuple[str, ...] = ()
    infeasible: dict[int, tuple[str, ...]] = field(default_factory=dict)
    value: float | None = None  # the chosen trial's observed preference value
    considered: int = 0  # trials scored in full it was chosen among
    ignored_requirements: bool = False

    @property
    def none_qualifies(self) -> str | None:
        """One line when the run has merges scored in full yet none meets every requirement; None otherwise."""
        if self.trial is not None or not self.requirements or not self.considered:
            return None
        return (
            f"No evaluated merge meets every take_home requirement ({', '.join(self.requirements)}): all "
            f"{self.considered} trials scored in full break at least one."
        )


def preference_words(weights: Sequence[float], objective_names: Sequence[str], task_names: Sequence[str]) -> str:
    """"the mean task score" for the default weights, else "the weighted mean of 2 × arith + 1 × reverse"."""
    if tuple(weights) == tuple(1.0 if n in task_names else 0.0 for n in objective_names):
        return "the mean task score"
    terms = [f"{w:g} × {n}" for w, n in zip(weights, objective_names) if w > 0]
    return f"the weighted mean of {' + '.join(terms)}"


def _bound(r: Requirement, sources: Sequence[SourceScore]) -> float:
    if r.source is None:
        return r.offset
    where = f"take_home.require {r.text!r}"
    source = next((s for s in sources if s.name == r.source), None)
    if source is None:
        raise MmmoError(f"{where}: the source model {r.source} has not been scored in this run")
    if source.objectives is None or r.objective not in source.objectives:
        raise MmmoError(f"{where}: the source model {r.source} failed to score ({source.error or 'no score'})")
    return source.objectives[r.objective] + r.offset


def resolve_target(
    pref: TakeHomeSpec, objective_names: Sequence[str], task_names: Sequence[str], sources: Sequence[SourceScore]
) -> tuple[Target, tuple[str, ...]]:
    """The Target over `objective_names` (in that order) and each requirement's text with its resolved bound.

    A relative requirement's bound is its source's score in this run plus the offset; MmmoError (one line) when
    that source is missing or failed.
    """
    names = list(objective_names)
    minimums, texts = [], []
    for r in pref.requirements:
        if r.objective not in names:
            raise MmmoError(f"take_home.require {r.text!r}: {r.objective!r} is not an objective of this run")
        bound = _bound(r, sources)
        minimums.append((names.index(r.objective), bound))
        texts.append(r.text if r.source is None else f"{r.text} ({bound:.4g})")
    return Target(pref.weight_of(names, task_names), tuple(minimums)), tuple(texts)


def choose_trial(
    trials: Sequence[Trial],
    objective_names: Sequence[str],
    task_names: Sequence[str],
    sources: Sequence[SourceScore],
    pref: TakeHomeSpec,
    *,
    cat_dims: Sequence[int] = (),
    ignore_requirements: bool = False,
) -> TakeHomeChoice:
    """The take-home trial among `trials` (done, scored in full), chosen by `pref` with `choose_take_home`.

    X is each trial's unit-cube point, Y its objectives, Yvar the loop's known variances (stderr, documents).
    Feasibility is on OBSERVED scores. `ignore_requirements`: choose by the preference alone (still listing the
    trials that break a requirement). Deterministic: the posterior's GP fit is seeded.
    """
    names = list(objective_names)
    trials = sorted(trials, key=lambda t: t.id)  # a tie goes to the lowest row: the lowest id
    target, texts = resolve_target(pref, names, task_names, sources)
    words = preference_words(target.weights, names, task_names)
    if not trials:
        return TakeHomeChoice(None, "no merge has been scored in full yet", target, words, texts)
    X = torch.tensor([t.x for t in trials], dtype=torch.float64)
    Y = torch.tensor([[t.objectives[n] for n in names] for t in trials], dtype=torch.float64)  # type: ignore[index]
    slack = target.slack(Y)
    infeasible = {
        t.id: tuple(texts[k] for k in range(len(texts)) if float(slack[i, k]) < 0)
        for i, t in enumerate(trials) if bool((slack[i] < 0).any())
    }
    rule = Target(target.weights) if ignore_requirements else target
    chosen = choose_take_home(X, Y, rule, done_variances(trials, names), by=pref.choose, cat_dims=cat_dims)
    among = len(trials) if ignore_requirements else len(trials) - len(infeasible)
    by = pref.choose if chosen is None else chosen.by
    how = (
        f"the highest {'posterior mean' if by == 'posterior' else 'observed value'} of {words} among the {among} "
        f"trial{'s' if among != 1 else ''} scored in full"
    )
    if texts:
        how += " (ignoring the requirements, which none meets)" if ignore_requirements else (
            " that meet every requirement"
        )
    if by != pref.choose:
        how += (
            f" (too few for the posterior, which needs {MIN_POINTS_FOR_POSTERIOR})" if among < MIN_POINTS_FOR_POSTERIOR
            else " (the posterior's GP could not be fitted)"
        )
    trial = None if chosen is None else trials[chosen.row]
    value = None if chosen is None else float(target.value(Y[chosen.row]))
    return TakeHomeChoice(trial, how, target, words, texts, infeasible, value, len(trials), ignore_requirements)


def preference_from(
    pref: TakeHomeSpec, objective_names: Sequence[str], model_names: Sequence[str], sources_scored: bool, *,
    weights: str | None = None, require: Sequence[str] | None = None, choose: str | None = None,
) -> TakeHomeSpec:
    """`pref` with `mmmo export`'s overrides (weights as "arith=2,reverse=1"), checked as a spec's section is."""
    from pydantic import ValidationError

    try:
        new = pref.overridden(weights=weights, require=require, choose=choose)
        new.check(objective_names, model_names, sources_scored)
    except ValidationError as err:
        raise MmmoError(f"take_home: {validation_message(err)}") from None
    except ValueError as err:
        raise MmmoError(str(err)) from None
    return new
