"""The Python steps of scripts/gpu_check.sh (run by the check's venv python): `python gpu_check_helpers.py CMD ARGS`.

    link-parent PARENT_PYTHON             if PARENT_PYTHON is itself a venv, put its site-packages on our path
    same-sources SRC_DIR                  fail unless the installed mmmo is this venv's and equals SRC_DIR
    write-spec DEMO_DIR SPEC RUN DEVICE   a short bf16 search spec over a built demo, on DEVICE
    search-report RUN_DIR WALL_S          a finished search's timings in one line; fails if a candidate failed

Kept apart from mmmo (stdlib only, except where a step needs mmmo itself) so the check runs the installed package.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "_gpu_check_parent.pth"


def link_parent(parent_python: str) -> None:
    """`venv --system-site-packages` exposes the *base* interpreter's packages, not those of a venv it was made
    from; the box's torch often lives in such a venv (e.g. /opt/torch/.venv), so link that one's site-packages
    in too. A .pth line is appended after this venv's own site-packages: what is installed here still wins."""
    probe = ("import json, sys, sysconfig; p = sysconfig.get_paths(); "
             "print(json.dumps([sys.prefix != sys.base_prefix, p['purelib'], p['platlib']]))")
    is_venv, purelib, platlib = json.loads(
        subprocess.run([parent_python, "-c", probe], capture_output=True, text=True, check=True).stdout
    )
    if not is_venv:
        return
    own = Path(sysconfig.get_paths()["purelib"])
    (own / PTH_NAME).write_text("\n".join(dict.fromkeys([purelib, platlib])) + "\n")


def same_sources(src: Path) -> None:
    """The check must test this checkout: a wheel built from other sources (or an mmmo from outside the venv,
    such as an editable install of the parent) is refused with one line."""
    import mmmo

    installed = Path(mmmo.__file__).resolve().parent
    if not installed.is_relative_to(Path(sys.prefix).resolve()):
        sys.exit(f"gpu_check: mmmo imports from {installed}, not from the check's venv {sys.prefix}")
    differ = [
        str(p.relative_to(src))
        for p in sorted(src.rglob("*.py"))
        if not (installed / p.relative_to(src)).is_file()
        or (installed / p.relative_to(src)).read_bytes() != p.read_bytes()
    ]
    if differ:
        sys.exit(f"gpu_check: the mmmo wheel was built from other sources than this checkout ({differ[0]} differs"
                 f"{f' and {len(differ) - 1} more' if len(differ) > 1 else ''}): rebuild it with make gpu-wheels")


def write_spec(demo: Path, spec_path: Path, run_dir: Path, device: str) -> None:
    """The demo search, shortened (6 Sobol points + 2 BO batches of 3) and merged in bfloat16 on `device`."""
    import yaml

    from mmmo.demo import DemoPaths
    from mmmo.testing import search_spec_for

    spec = search_spec_for(
        DemoPaths.under(demo),
        merge={"dtype": "bfloat16"},
        optimizer={"initial": 6, "batches": 2, "candidates": 6, "batch_size": 3},
        evaluation={"device": device, "batch_size": 64, "evaluate_sources": True},
        output={"dir": str(run_dir), "export": "none"},
    )
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))


def search_report(run_dir: Path, wall: float) -> None:
    """One line: candidates done, merge and scoring time per candidate, candidates scored per second."""
    import yaml

    from mmmo.run.store import fold_events, read_events

    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    trials = fold_events(read_events(run_dir / "trials.jsonl")).trials
    done = [t for t in trials if t.status == "done"]
    failed = [t for t in trials if t.status == "failed"]
    merge = [t.merge_seconds for t in done if t.merge_seconds is not None]
    score = [t.eval_seconds for t in done if t.eval_seconds is not None]
    if not done or not merge:
        sys.exit(f"gpu_check: the search scored no candidate ({len(failed)} failed"
                 f"{': ' + str(failed[0].error) if failed else ''})")
    busy = sum(merge) + sum(score)
    print(f"demo search on {spec['evaluation']['device']}, {spec['merge']['dtype']} merges: {len(done)} candidates "
          f"scored, {len(failed)} failed, {wall:.0f} s wall (model loading, source scoring and BO steps included); "
          f"per candidate median merge {statistics.median(merge) * 1e3:.1f} ms, lm-eval scoring "
          f"{statistics.median(score):.2f} s -> {len(done) / busy:.2f} candidates scored per second "
          f"(merge + scoring), {len(done) / wall:.2f} per second of wall time")
    if failed:
        sys.exit(f"gpu_check: {len(failed)} candidate(s) failed, first: {failed[0].error}")


def main() -> None:
    cmd, *args = sys.argv[1:]
    if cmd == "link-parent":
        link_parent(args[0])
    elif cmd == "same-sources":
        same_sources(Path(args[0]).resolve())
    elif cmd == "write-spec":
        write_spec(Path(args[0]), Path(args[1]), Path(args[2]), args[3])
    elif cmd == "search-report":
        search_report(Path(args[0]), float(args[1]))
    else:
        sys.exit(f"gpu_check_helpers: unknown command {cmd!r}")


if __name__ == "__main__":
    main()
