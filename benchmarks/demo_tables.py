"""The demo merge space the surrogate problems stand on: its spec, its space, and the cached tables of evaluated
demo merges (benchmarks/data/demo_table*.json) with the base model's scores."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.environment import DATA, REPO

DEFAULT_DEMO_DIR = REPO / ".cache" / "demo-test"  # the test suite's demo build
DEMO_OBJECTIVES = ["arith", "reverse", "sort", "sparsity"]
DEMO_TASKS = ["arith", "reverse", "sort"]
DEMO_EXAMPLES = 50  # examples per task: the demo's `limit`, and the noisy demo's binomial n


# Layer groups -> the demo model's layer count, where the default demo (3 layers) has too few for them.
DEMO_MODEL_LAYERS = {6: 6}


def table_path(layer_groups: int) -> Path:
    return DATA / ("demo_table.json" if layer_groups == 1 else f"demo_table_layers{layer_groups}.json")


def demo_params(layer_groups: int) -> Any:
    """The demo calibration a table with `layer_groups` groups is built from: the default demo, or the same
    calibration with more layers (`DEMO_MODEL_LAYERS`)."""
    from mmmo.demo import DEFAULT_PARAMS

    layers = DEMO_MODEL_LAYERS.get(layer_groups)
    return DEFAULT_PARAMS if layers is None else replace(DEFAULT_PARAMS, layers=layers)


def demo_dir_for(layer_groups: int, demo_dir: Path | None = None) -> Path:
    """Where the demo of `layer_groups` is built: `demo_dir` if given, else the test suite's demo build, or
    `.cache/demo-layers<L>` for a demo with more layers."""
    if demo_dir is not None:
        return demo_dir
    layers = DEMO_MODEL_LAYERS.get(layer_groups)
    return DEFAULT_DEMO_DIR if layers is None else REPO / ".cache" / f"demo-layers{layers}"


def demo_search_spec(demo_dir: Path, limit: int, layer_groups: int = 1) -> Any:
    """The demo's search spec (3 experts, dare_ties weight + density, 3 tasks + sparsity) on CPU."""
    from mmmo.demo import build_demo
    from mmmo.spec.schema import spec_from_dict
    from mmmo.testing import search_spec_for

    demo = build_demo(demo_dir, params=demo_params(layer_groups))
    merge = {"granularity": f"layers:{layer_groups}"} if layer_groups > 1 else {}
    data = search_spec_for(
        demo,
        limit=limit,
        merge=merge,
        evaluation={"device": "cpu", "batch_size": 64, "evaluate_sources": False},
        output={"dir": "/tmp/mmmo-bench-unused", "export": "none"},
    )
    return spec_from_dict(data, demo.root)


def demo_space(layer_groups: int) -> Any:
    """The demo's search space without building the spec (what `SearchSpace.from_spec(demo_search_spec(...))`
    gives; `build_table` checks that, and `load_table` checks the dimension names against the table's)."""
    from mmmo.optimizer.space import SearchSpace

    return SearchSpace(model_names=("arith", "reverse", "sort"), layer_groups=layer_groups,
                       weight_bounds=(0.0, 1.0), density_bounds=(0.1, 1.0))


def demo_digest(layer_groups: int = 1) -> str:
    """The digest of the demo calibration the table of `layer_groups` is built from."""
    return demo_params(layer_groups).digest()


def build_table(demo_dir: Path, n: int, limit: int, out: Path, seed: int = 1234, layer_groups: int = 1) -> None:
    """Evaluate `n` scrambled Sobol points of the demo space (`layer_groups` per-layer-group weights) and write
    them (incrementally) as JSON."""
    from mmmo.evaluation.evaluator import CandidateEvaluator
    from mmmo.optimizer.space import SearchSpace
    from mmmo.optimizer.strategies import sobol_points
    from mmmo.run.records import Trial

    spec = demo_search_spec(demo_dir, limit, layer_groups=layer_groups)
    if SearchSpace.from_spec(spec).names != demo_space(layer_groups).names:  # the coordinates the table stores
        sys.exit(f"the demo spec's search space {SearchSpace.from_spec(spec)} is not demo_space({layer_groups}) "
                 f"{demo_space(layer_groups)}: update demo_space")
    ev = CandidateEvaluator.from_spec(spec, device="cpu")
    X = sobol_points(n, ev.space.dim, seed)
    rows: list[dict[str, Any]] = []
    seconds0 = 0.0
    if out.is_file():
        old = json.loads(out.read_text())
        if (old.get("seed") == seed and old.get("limit") == limit and old.get("demo") == demo_digest(layer_groups)
                and old.get("layer_groups", 1) == layer_groups and old.get("dim") == ev.space.dim):
            rows, seconds0 = old["rows"], old.get("seconds", 0.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(len(rows), n):
        t = ev.evaluate(Trial(id=i, batch=0, x=X[i].tolist(), step="sobol"))
        if t.status != "done":
            print(f"point {i} failed: {t.error}", file=sys.stderr)
            continue
        rows.append({"x": [round(v, 6) for v in t.x], "y": [round(t.objectives[k], 6) for k in DEMO_OBJECTIVES]})
        if len(rows) % 8 == 0 or i == n - 1:
            meta = {"objectives": DEMO_OBJECTIVES, "limit": limit, "seed": seed, "demo": demo_digest(layer_groups),
                    "layer_groups": layer_groups, "dim": ev.space.dim, "names": ev.space.names,
                    "seconds": round(time.perf_counter() - t0 + seconds0, 1), "rows": rows}
            out.write_text(json.dumps(meta, separators=(",", ":")))
            print(f"{len(rows)}/{n} points, {(time.perf_counter() - t0) / max(len(rows), 1):.1f} s/point",
                  flush=True)



def load_table(path: Path, layer_groups: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A cached table as `X [n, dim]`, `Y [n, 4]` (float64), and its metadata (without the rows)."""
    if not path.is_file():
        problem = "demo" if layer_groups == 1 else f"demo-layers{layer_groups}"
        sys.exit(f"no surrogate table at {path}: build it with --problem {problem} --build-table 512")
    data = json.loads(path.read_text())
    if data.get("demo") != demo_digest(layer_groups):
        print(f"warning: {path} was built from another demo calibration; rebuild it with --build-table",
              file=sys.stderr)
    if data.get("names") != demo_space(layer_groups).names:
        sys.exit(f"{path}: its dimensions {data.get('names')} are not the demo space's "
                 f"{demo_space(layer_groups).names}")
    X = torch.tensor([r["x"] for r in data["rows"]], dtype=torch.float64)
    Y = torch.tensor([r["y"] for r in data["rows"]], dtype=torch.float64)
    meta = {k: v for k, v in data.items() if k != "rows"}
    return X, Y, meta


def fixed_ref_point(Y_table: torch.Tensor) -> list[float]:
    """One reference point for every strategy and seed: the table's nadir minus 10% of its range."""
    from mmmo.optimizer.pareto import infer_ref_point

    return infer_ref_point(Y_table).tolist()



def demo_base_scores(demo_dir: Path, limit: int) -> dict[str, float]:
    """The demo base model's objectives (unmerged, scored by `CandidateEvaluator` on the table's documents),
    cached in benchmarks/data/demo_base_scores.json with the demo's digest and `limit`."""
    path = DATA / "demo_base_scores.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("demo") == demo_digest() and data.get("limit") == limit:
            return data["objectives"]
    from mmmo.evaluation.evaluator import CandidateEvaluator

    score = CandidateEvaluator.from_spec(demo_search_spec(demo_dir, limit), device="cpu").evaluate_source(None)
    if score.objectives is None:
        sys.exit(f"scoring the demo base model failed: {score.error}")
    data = {"demo": demo_digest(), "limit": limit, "objectives": score.objectives, "stderr": score.stderr}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return score.objectives

