"""A benchmark's results: typed run records, and the results file `{"key": what makes runs comparable, "runs": [one
record per run]}`, written after every run (resumable), with part files `<stem>.part*.json` from other processes
joining its table."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from benchmarks.environment import DATA, SMOKE_OUT


class Run(Protocol):
    """One stored run: what the table groups it by (`label`: a strategy, a variant), its seed, and its JSON."""

    seed: int

    @property
    def label(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Run)
ReadRun = Callable[[dict[str, Any]], R]  # a stored run's JSON object -> its record (e.g. StrategyRun.from_json)


def known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the keys `cls` (a dataclass) has no field for: a newer file's extras are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def without_none(record: Any) -> dict[str, Any]:
    """A dataclass as a JSON object, its None fields left out (absent in older files, read back as None)."""
    return {k: v for k, v in dataclasses.asdict(record).items() if v is not None}


@dataclass(frozen=True)
class StrategyRun:
    """One strategy's run on one problem: every evaluation in order, `x [n, d]` in the unit cube, `y [n, m]` the
    TRUE objective values (NaN rows: failed), `y_obs [n, m]` what the strategy saw when the problem is noisy.
    Times in seconds: the whole run, evaluating (`eval_seconds`), proposing each batch (`propose_seconds`) and the
    optimiser's time per batch (`step_seconds`). `steps [n]` names the step that proposed each point; `spec` is the
    OptimizerSpec's identity (equal specs, equal runs: `copied_from` names the strategy a run was copied from);
    `methods [n]` the merge method of each point (a method search); `priors [n]` the GPs' prior mean each point
    was proposed under (`Trial.prior`; None: not proposed by a GP)."""

    strategy: str
    seed: int
    x: list[list[float]]
    y: list[list[float]]
    seconds: float
    y_obs: list[list[float]] | None = None
    eval_seconds: float | None = None
    propose_seconds: list[float] | None = None
    step_seconds: float = math.nan
    batches: int | None = None
    steps: list[str] | None = None
    spec: str | None = None
    copied_from: str | None = None
    methods: list[str] | None = None
    priors: list[str | None] | None = None

    @property
    def label(self) -> str:
        return self.strategy

    @property
    def observed(self) -> list[list[float]]:
        """What the strategy saw: `y_obs` on a noisy problem, else the true `y`."""
        return self.y_obs if self.y_obs is not None else self.y

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StrategyRun:
        return cls(**known_fields(cls, data))

    def to_json(self) -> dict[str, Any]:
        return without_none(self)


def results_path(benchmark: str, problem: str, smoke: bool) -> Path:
    """`benchmarks/data/<benchmark>_<problem>.json`, or `/tmp/<benchmark>_<problem>_smoke.json` for a smoke run."""
    return SMOKE_OUT / f"{benchmark}_{problem}_smoke.json" if smoke else DATA / f"{benchmark}_{problem}.json"


def parts(out: Path) -> list[Path]:
    """The part files of a default results file (`<stem>.part<anything>.json`): a second process's runs, written
    with `--out`, which join the default file's table without naming them."""
    return sorted(out.parent.glob(f"{out.stem}.part*.json"))


def read_results(path: Path, read: ReadRun[R]) -> tuple[dict[str, Any] | None, list[R]]:
    """A results file's key and runs (None and none when there is no file)."""
    if not path.is_file():
        return None, []
    stored = json.loads(path.read_text())
    return stored.get("key"), [read(r) for r in stored["runs"]]


def merge_runs(runs: Sequence[R], key: dict[str, Any], include: Sequence[Path], auto: Sequence[Path] = (),
               read: ReadRun[R] = StrategyRun.from_json) -> list[R]:  # type: ignore[assignment]
    """`runs` plus the runs of `include` (which must have `key`) and of `auto` (skipped, with a warning, when their
    key differs); a (label, seed) already present is not taken twice."""
    runs = list(runs)
    for extra in [*include, *(p for p in auto if p not in include)]:
        other = json.loads(extra.read_text())
        if other.get("key") != key:
            if extra in include:
                sys.exit(f"{extra}: different problem, budget or reference point, not comparable")
            print(f"warning: {extra} left out: different problem, budget or options", file=sys.stderr)
            continue
        have = {(r.label, r.seed) for r in runs}
        runs += [r for r in map(read, other["runs"]) if (r.label, r.seed) not in have]
    return runs


def stored_runs(out: Path, key: dict[str, Any], fresh: bool, read: ReadRun[R] = StrategyRun.from_json) -> list[R]:  # type: ignore[assignment]
    """The runs already in `out` for this key (none with `fresh`, or when they are for another key)."""
    if not out.is_file() or fresh:
        return []
    old = json.loads(out.read_text())
    if old.get("key") == key:
        return [read(r) for r in old["runs"]]
    print(f"{out}: stored runs are for another problem, budget or options; starting over "
          "(the file is overwritten at the first run)", file=sys.stderr)
    return []


def save_runs(out: Path, key: dict[str, Any], runs: Sequence[Run]) -> None:
    """Write the results file atomically (a cut-short process never leaves half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "runs": [r.to_json() for r in runs]}, separators=(",", ":")))
    tmp.replace(out)
