"""Score a demo build (base, experts, task-arithmetic merges) to check its claims hold on this CPU's kernels.

The demo's training is chaotic: a last-bit difference (another CPU kernel, another seed) is amplified until the
trained weights are a different draw. A calibration is only sound when its claims hold with a margin for every
draw, so check several seeds under several kernel choices, e.g.

    for cap in default avx2 avx512; do for seed in 0 1 2; do
        ATEN_CPU_CAPABILITY=$cap python scripts/demo_calibration.py --seed $seed --out calib.jsonl
    done; done

Each call builds into a temporary folder (about 2 minutes on 2 cores) and appends one JSON line to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mmmo import demo as D
from mmmo.objectives.lm_eval import LmEvalObjectives
from mmmo.spec.schema import ObjectiveSpec

MERGE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)


def score_build(paths: D.DemoPaths, examples: int) -> dict[str, dict[str, float]]:
    """Exact match per skill of the base, each expert, uniform task-arithmetic merges at MERGE_WEIGHTS and one
    merge per expert with that expert at full weight."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    live = AutoModelForCausalLM.from_pretrained(paths.base, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(paths.base)
    specs = [
        ObjectiveSpec(name=s, task=f"{D.TASK_PREFIX}{s}", metric="exact_match", limit=examples) for s in D.SKILLS
    ]
    objectives = LmEvalObjectives(specs, tasks_dir=str(paths.tasks_dir), batch_size=64)
    objectives.bind(live, tokenizer, torch.device("cpu"))
    params = dict(live.named_parameters())
    base = load_file(paths.base / "model.safetensors")
    experts = {s: load_file(p / "model.safetensors") for s, p in paths.experts.items()}

    def score(weights: dict[str, torch.Tensor]) -> dict[str, float]:
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        return {name: s.value for name, s in objectives.evaluate().items()}

    table = {"base": score(base)} | {s: score(sd) for s, sd in experts.items()}
    for w in MERGE_WEIGHTS:
        table[f"ta{w}"] = score(task_arithmetic(base, experts, dict.fromkeys(experts, w)))
    for skill in experts:  # one expert at full weight, the others at half
        weights = {s: 1.0 if s == skill else 0.5 for s in experts}
        table[f"ta-{skill}"] = score(task_arithmetic(base, experts, weights))
    return table


def task_arithmetic(
    base: dict[str, torch.Tensor], experts: dict[str, dict[str, torch.Tensor]], weights: dict[str, float]
) -> dict[str, torch.Tensor]:
    """base + Σ weight·(expert − base), tensor by tensor."""
    return {k: v + sum(weights[s] * (sd[k] - v) for s, sd in experts.items()) for k, v in base.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="{}", help="DemoParams overrides as JSON, e.g. '{\"base_lr\": 1e-3}'")
    parser.add_argument("--examples", type=int, default=None, help="examples scored per task (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="append the result as one JSON line")
    args = parser.parse_args()
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.params).items()}
    params = replace(D.DEFAULT_PARAMS, seed=args.seed, **overrides)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmmo-calib-") as tmp:
        paths = D.build_demo(Path(tmp) / "demo", params=params)
        with D.torch_threads(1):
            table = score_build(paths, args.examples or params.eval_examples)
    mean = {name: sum(row.values()) / len(row) for name, row in table.items()}
    best_expert = max(mean[s] for s in D.SKILLS)
    best_merge = max(v for k, v in mean.items() if k.startswith("ta"))
    for name, row in table.items():
        print(f"{name:8} " + " ".join(f"{k}={v:.2f}" for k, v in row.items()) + f"  mean={mean[name]:.3f}")
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"{cap} seed {args.seed}: best merge − best expert = {best_merge - best_expert:+.3f}")
    if args.out:
        record = {"capability": cap, "params": asdict(params), "table": table,
                  "seconds": round(time.perf_counter() - started, 1)}
        with args.out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
