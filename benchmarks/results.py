"""A benchmark's results file: `{"key": what makes runs comparable, "runs": [one dict per run]}`, written after
every run (resumable), with part files `<stem>.part*.json` from other processes joining its table."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.environment import DATA, SMOKE_OUT


def results_path(benchmark: str, problem: str, smoke: bool) -> Path:
    """`benchmarks/data/<benchmark>_<problem>.json`, or `/tmp/<benchmark>_<problem>_smoke.json` for a smoke run."""
    return SMOKE_OUT / f"{benchmark}_{problem}_smoke.json" if smoke else DATA / f"{benchmark}_{problem}.json"


def parts(out: Path) -> list[Path]:
    """The part files of a default results file (`<stem>.part<anything>.json`): a second process's runs, written
    with `--out`, which join the default file's table without naming them."""
    return sorted(out.parent.glob(f"{out.stem}.part*.json"))


def merge_runs(runs: list[dict[str, Any]], key: dict[str, Any], include: Sequence[Path],
               auto: Sequence[Path] = (), label: str = "strategy") -> list[dict[str, Any]]:
    """`runs` plus the runs of `include` (which must have `key`) and of `auto` (skipped, with a warning, when their
    key differs); a (`run[label]`, seed) already present is not taken twice."""
    runs = list(runs)
    for extra in [*include, *(p for p in auto if p not in include)]:
        other = json.loads(extra.read_text())
        if other.get("key") != key:
            if extra in include:
                sys.exit(f"{extra}: different problem, budget or reference point, not comparable")
            print(f"warning: {extra} left out: different problem, budget or options", file=sys.stderr)
            continue
        have = {(r[label], r["seed"]) for r in runs}
        runs += [r for r in other["runs"] if (r[label], r["seed"]) not in have]
    return runs


def stored_runs(out: Path, key: dict[str, Any], fresh: bool) -> list[dict[str, Any]]:
    """The runs already in `out` for this key (none with `fresh`, or when they are for another key)."""
    if not out.is_file() or fresh:
        return []
    old = json.loads(out.read_text())
    if old.get("key") == key:
        return list(old["runs"])
    print(f"{out}: stored runs are for another problem, budget or options; starting over "
          "(the file is overwritten at the first run)", file=sys.stderr)
    return []


def save_runs(out: Path, key: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Write the results file atomically (a cut-short process never leaves half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "runs": runs}, separators=(",", ":")))
    tmp.replace(out)
