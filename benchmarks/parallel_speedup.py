"""Speed-up of Ray workers over one in-process evaluator on the demo search (run by hand).

    .venv/bin/python -m benchmarks.parallel_speedup [--workers 2] [--limit 50]

Times the evaluation phases (per batch: proposals journaled -> last result) of the same search (same seed, same proposals) with 1 and with N workers and
prints the ratio. Start-up (loading sources, building tasks, starting Ray) is reported separately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.environment import REPO, benchmark_environment


def evaluation_time(events: list[dict]) -> float:
    """Seconds spent evaluating: per batch, from its proposals being journaled to its last result (the BO
    steps between batches are the same whatever the number of workers, so they are left out)."""
    spans: dict[int, list[float]] = {}
    for e in events:
        if e["event"] in ("proposed", "done", "failed"):
            spans.setdefault(e["trial"]["batch"], []).append(e["time"])
    return sum(max(times) - min(times) for times in spans.values())


def main() -> None:
    benchmark_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=50, help="examples per task")
    parser.add_argument("--demo-dir", type=Path, default=REPO / ".cache" / "demo-test")
    args = parser.parse_args()

    import yaml

    import mmmo
    from mmmo.demo import build_demo
    from mmmo.run.store import fold_events, read_events
    from mmmo.testing import search_spec_for

    demo = build_demo(args.demo_dir)
    opt = {"initial": 8, "batches": 2, "candidates": 8, "batch_size": 4}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            folder = Path(tmp) / f"w{workers}"
            data = search_spec_for(
                demo,
                limit=args.limit,
                optimizer={**opt, "seed": 0},
                evaluation={"workers": workers, "device": "cpu", "batch_size": 64, "evaluate_sources": False},
                output={"dir": str(folder / "run"), "export": "none"},
            )
            folder.mkdir(parents=True)
            spec = folder / "spec.yaml"
            spec.write_text(yaml.safe_dump(data, sort_keys=False))
            t0 = time.perf_counter()
            mmmo.search(spec, show_progress=False)
            total = time.perf_counter() - t0
            events = read_events(folder / "run" / "trials.jsonl")
            rows.append((workers, total, evaluation_time(events), len(fold_events(events).trials)))
    base_eval = rows[0][2]
    print(f"machine: {os.cpu_count()} CPU cores; demo search, {rows[0][3]} evaluations, limit {args.limit}/task")
    print(f"{'workers':>7} {'total s':>8} {'eval phase s':>13} {'speed-up (eval)':>16}")
    for workers, total, phase, _ in rows:
        print(f"{workers:>7} {total:>8.1f} {phase:>13.1f} {base_eval / phase:>15.2f}x")


if __name__ == "__main__":
    main()
