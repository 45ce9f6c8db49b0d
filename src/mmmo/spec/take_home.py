"""The spec's `take_home:` section: what the one merge a user takes home maximises (weights per objective), the
requirements it must meet (absolute, or relative to a source model the run scores), and how it is chosen."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

ChooseRule = Literal["posterior", "observed"]
BASE_SOURCE = "base"  # the name a run gives its base model among the sources
REQUIREMENT_FORM = "'<objective> >= <number>' or '<objective> >= <source> [+|- <number>]'"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# Model names hold no whitespace (config.ModelRef), so a source ends at the first blank; the offset needs one.
_RELATIVE = re.compile(rf"(?P<source>\S+?)(?:\s+(?P<sign>[+-])\s*(?P<offset>{_NUMBER}))?")


@dataclass(frozen=True)
class Requirement:
    """`objective >= value` (absolute: `source` None) or `objective >= source's score + offset` (raw units)."""

    objective: str
    source: str | None
    offset: float  # the bound itself when absolute

    @property
    def text(self) -> str:
        if self.source is None:
            return f"{self.objective} >= {self.offset:g}"
        sign = f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}" if self.offset else ""
        return f"{self.objective} >= {self.source}{sign}"


def parse_requirement(text: str) -> Requirement:
    """One requirement from its text; ValueError naming it when it is malformed."""
    lhs, op, rhs = str(text).partition(">=")
    objective, rhs = lhs.strip(), rhs.strip()
    if not op or not objective or not rhs or "<" in lhs or ">" in lhs or "=" in rhs:
        raise ValueError(f"{text!r} is malformed: expected {REQUIREMENT_FORM}")
    if re.fullmatch(_NUMBER, rhs):
        return Requirement(objective, None, float(rhs))
    m = _RELATIVE.fullmatch(rhs)
    if m is None or re.fullmatch(_NUMBER, m["source"]):
        raise ValueError(f"{text!r} is malformed: expected {REQUIREMENT_FORM}")
    offset = 0.0 if m["offset"] is None else float(m["sign"] + m["offset"])
    if not math.isfinite(offset):
        raise ValueError(f"{text!r}: the offset must be a finite number")
    return Requirement(objective, m["source"], offset)


def parse_weights(text: str) -> dict[str, float]:
    """`"arith=2,reverse=1"` (as `mmmo export --weights` takes it) as a mapping; ValueError naming a bad item."""
    out: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not re.fullmatch(_NUMBER, value.strip()):
            raise ValueError(f"weights: {item!r} is not 'objective=number' (e.g. 'arith=2,reverse=1')")
        out[name.strip()] = float(value)
    return out


class TakeHomeSpec(BaseModel):
    """`take_home:`: the preference that chooses `export: best`, leads report.md and marks `mmmo show`.

    `weights`: per objective (sparsity too), missing ones 0; None: every task objective 1. `require`: constraint
    texts (see `parse_requirement`). `choose`: "posterior" (highest posterior mean of the preference among the
    evaluated merges that meet every requirement) or "observed" (highest observed value, as runs before it did).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    weights: dict[str, float] | None = None
    require: list[str] = []
    choose: ChooseRule = "posterior"

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        negative = [f"{k}: {w:g}" for k, w in v.items() if w < 0]
        if negative:
            raise ValueError(f"must not be negative ({', '.join(negative)})")
        if not any(w > 0 for w in v.values()):
            raise ValueError("all zero: give at least one objective a positive weight")
        return v

    @field_validator("require")
    @classmethod
    def _require(cls, v: list[str]) -> list[str]:
        for text in v:
            parse_requirement(text)
        return v

    @property
    def requirements(self) -> list[Requirement]:
        return [parse_requirement(t) for t in self.require]

    def weight_of(self, objective_names: Sequence[str], task_names: Sequence[str]) -> tuple[float, ...]:
        """One weight per objective in `objective_names` order (default: 1 on each task objective)."""
        if self.weights is None:
            return tuple(1.0 if n in task_names else 0.0 for n in objective_names)
        return tuple(float(self.weights.get(n, 0.0)) for n in objective_names)

    def check(self, objective_names: Sequence[str], model_names: Sequence[str], sources_scored: bool) -> None:
        """ValueError (one line, naming the item) for an unknown objective or source, or a source never scored."""
        known = ", ".join(objective_names)
        for name in self.weights or {}:
            if name not in objective_names:
                raise ValueError(f"take_home.weights: {name!r} is not an objective of this spec ({known})")
        sources = [BASE_SOURCE, *model_names]
        for i, r in enumerate(self.requirements):
            where = f"take_home.require[{i}] {self.require[i]!r}"
            if r.objective not in objective_names:
                raise ValueError(f"{where}: {r.objective!r} is not an objective of this spec ({known})")
            if r.source is not None and r.source not in sources:
                raise ValueError(
                    f"{where}: {r.source!r} is neither a number nor a source model ({', '.join(sources)}); "
                    "an offset needs blanks around its sign, e.g. 'base - 0.02'"
                )
            if r.source is not None and not sources_scored:
                raise ValueError(
                    f"{where}: relative to {r.source}, which evaluation.evaluate_sources: false never scores"
                )

    def overridden(
        self, *, weights: str | None = None, require: Sequence[str] | None = None, choose: str | None = None
    ) -> TakeHomeSpec:
        """This preference with what `mmmo export` gives instead (weights as "arith=2,reverse=1"); validated."""
        data = self.model_dump()
        if weights is not None:
            data["weights"] = parse_weights(weights)
        if require is not None:
            data["require"] = list(require)
        if choose is not None:
            data["choose"] = choose
        return TakeHomeSpec.model_validate(data)
