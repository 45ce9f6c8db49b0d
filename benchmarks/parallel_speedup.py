"""Speed-up of Ray workers over one in-process evaluator on the demo search (run by hand).

    .venv/bin/python benchmarks/parallel_speedup.py [--workers 2] [--limit 50]

Times the evaluation phase of the same search (same seed, same proposals) with 1 and with N workers and
prints the ratio. Start-up (loading sources, building tasks, starting Ray) is reported separately.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HOME", str(REPO / ".cache" / "hf_home"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=50, help="examples per task")
    parser.add_argument("--demo-dir", type=Path, default=REPO / "demo")
    args = parser.parse_args()

    from conftest import write_demo_spec

    import mmmo
    from mmmo.demo import ensure_demo
    from mmmo.run_store import fold_events, read_events

    demo = ensure_demo(args.demo_dir)
    opt = {"initial": 8, "batches": 2, "candidates": 8, "batch_size": 4}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            folder = Path(tmp) / f"w{workers}"
            spec = write_demo_spec(
                demo, folder, limit=args.limit, optimizer=opt, evaluation={"workers": workers, "device": "cpu"}
            )
            t0 = time.perf_counter()
            mmmo.search(spec, show_progress=False)
            total = time.perf_counter() - t0
            events = read_events(folder / "run" / "trials.jsonl")
            first = min(e["time"] for e in events if e["event"] == "proposed")
            last = max(e["time"] for e in events if e["event"] in ("done", "failed"))
            n = len(fold_events(events).trials)
            rows.append((workers, total, last - first, n))
    base_eval = rows[0][2]
    print(f"machine: {os.cpu_count()} CPU cores; demo search, {rows[0][3]} evaluations, limit {args.limit}/task")
    print(f"{'workers':>7} {'total s':>8} {'eval phase s':>13} {'speed-up (eval)':>16}")
    for workers, total, phase, _ in rows:
        print(f"{workers:>7} {total:>8.1f} {phase:>13.1f} {base_eval / phase:>15.2f}x")


if __name__ == "__main__":
    main()
