"""The batch and the asynchronous schedule on the real demo, Ray workers with a delay per candidate (run by hand).

    .venv/bin/python -m benchmarks.schedule_demo [--seeds 3] [--workers 2] [--delay 10] [--sigma 0.5] [--out F]

Each candidate is merged and scored for real, then its worker waits a drawn delay (lognormal, median --delay
seconds, sigma --sigma; the same for a trial id and seed under both schedules: `mmmo.testing.candidate_delay`), so
that the ratio shows what a GPU box would see, where evaluations outlast the optimiser's step. With one worker the
batch schedule scores in the search's own process (taking turns with the optimiser) and the asynchronous one in a
Ray actor (the optimiser proposes while it scores), as a user's run would; --delay 0 shows what the overlap costs
or saves where both share a CPU's cores. Both schedules run
the demo's default search (10 initial + 4 batches of 5) with the same seeds. Prints per schedule the median [IQR]
of: the wall time from the first proposal to the last result, the workers' idle share over it (1 - their merging
and scoring time / (workers x wall time)), the final hypervolume (every run against one reference point: the
worst value of every run) and the best mean task score. Runs are kept in --out (by default
benchmarks/data/schedule_demo.json, the 2-worker runs), one setup per file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.environment import DATA, REPO, benchmark_environment

SCHEDULES = ("batch", "async")


@dataclass
class DemoRun:
    """One search: its wall time and the workers' busy time (seconds), and every done trial's objectives."""

    schedule: str
    seed: int
    workers: int
    wall_seconds: float
    busy_seconds: float
    values: list[list[float]]  # [trials, objectives], done trials, the spec's objective order
    mean_task: list[float]  # each done trial's mean task score

    @property
    def idle_share(self) -> float:
        return 1.0 - self.busy_seconds / (self.workers * self.wall_seconds)


def run_search(demo: Any, folder: Path, schedule: str, seed: int, args: argparse.Namespace) -> DemoRun:
    """One demo search under `schedule` on `args.workers` delayed Ray workers, read back from its journal."""
    import yaml

    import mmmo
    from mmmo.evaluation.ray_pool import RayPool
    from mmmo.run.store import fold_events, read_events
    from mmmo.testing import evaluator_delayed, search_spec_for, worker_delayed

    data = search_spec_for(
        demo, limit=args.limit,
        optimizer={"seed": seed, "schedule": schedule},
        evaluation={"workers": args.workers, "device": "cpu", "evaluate_sources": False},
        output={"dir": str(folder / "run"), "export": "none"},
    )
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    RayPool.worker_class = worker_delayed(args.delay, args.sigma, seed)
    with evaluator_delayed(args.delay, args.sigma, seed):  # where the one evaluator is in this process
        result = mmmo.search(folder / "spec.yaml", show_progress=False)
    events = read_events(folder / "run" / "trials.jsonl")
    trial_times = [e["time"] for e in events if e["event"] in ("proposed", "done", "failed")]
    trials = fold_events(events).trials
    names = [o.name for o in result.spec.objectives]
    tasks = [o.name for o in result.spec.task_objectives]
    done = [t for t in trials if t.status == "done" and t.objectives is not None]
    return DemoRun(
        schedule=schedule, seed=seed, workers=args.workers,
        wall_seconds=max(trial_times) - min(trial_times),
        busy_seconds=sum((t.merge_seconds or 0.0) + (t.eval_seconds or 0.0) for t in trials),
        values=[[t.objectives[n] for n in names] for t in done],  # type: ignore[index]
        mean_task=[sum(t.objectives[n] for n in tasks) / len(tasks) for t in done],  # type: ignore[index]
    )


def summarise(runs: list[DemoRun]) -> list[str]:
    """Per schedule: median [IQR] of wall time, idle share, final hypervolume (one reference point), best mean task."""
    import torch

    from benchmarks.schedule_sim import quartiles
    from mmmo.optimizer.pareto import hypervolume

    ref = torch.tensor([v for r in runs for v in r.values], dtype=torch.float64).min(0).values.tolist()
    hv = {id(r): hypervolume(torch.tensor(r.values, dtype=torch.float64), ref) for r in runs}
    lines = [f"demo, {runs[0].workers} Ray workers with a delay per candidate, seeds {sorted({r.seed for r in runs})}",
             "| schedule | wall time (s) | workers idle (%) | final hypervolume | best mean task score |",
             "|---|---|---|---|---|"]
    by = {s: [r for r in runs if r.schedule == s] for s in SCHEDULES}
    for s, rs in by.items():
        cells = [quartiles([r.wall_seconds for r in rs]), quartiles([100 * r.idle_share for r in rs]),
                 quartiles([hv[id(r)] for r in rs]), quartiles([max(r.mean_task) for r in rs])]
        lines.append(f"| {s} | " + " | ".join(f"{m:.4g} [{lo:.4g}-{hi:.4g}]" for m, lo, hi in cells) + " |")
    ratios = [a.wall_seconds / b.wall_seconds for a in by["async"] for b in by["batch"] if a.seed == b.seed]
    if ratios:
        lines.append(f"async / batch wall time, per seed: {', '.join(f'{x:.2f}' for x in ratios)}")
    return lines


def main() -> None:
    benchmark_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delay", type=float, default=10.0, help="median seconds added to each candidate")
    parser.add_argument("--sigma", type=float, default=0.5, help="the delay's lognormal sigma")
    parser.add_argument("--limit", type=int, default=50, help="examples per task")
    parser.add_argument("--demo-dir", type=Path, default=REPO / ".cache" / "demo-test")
    parser.add_argument("--out", type=Path, default=DATA / "schedule_demo.json", help="results JSON (resumable)")
    args = parser.parse_args()

    from mmmo.demo import build_demo

    demo = build_demo(args.demo_dir)
    path = args.out
    setup = {"workers": args.workers, "delay": args.delay, "sigma": args.sigma, "limit": args.limit}
    stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if stored.get("setup", setup) != setup:
        raise SystemExit(f"{path} holds runs of another setup ({stored['setup']}): move it aside first")
    stored["setup"] = setup
    runs = stored.setdefault("runs", {})
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for schedule in SCHEDULES:
                key = f"{schedule}/{seed}"
                if key not in runs:
                    runs[key] = asdict(run_search(demo, Path(tmp) / key.replace("/", "-"), schedule, seed, args))
                    path.write_text(json.dumps(stored, indent=1))
                    print(f"{key}: {runs[key]['wall_seconds']:.0f} s", flush=True)
    print("\n".join(summarise([DemoRun(**r) for r in runs.values()])))


if __name__ == "__main__":
    main()
