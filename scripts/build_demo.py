"""Build the demo problem (tiny base, three experts, lm-eval tasks): `python scripts/build_demo.py [DIR] [--force]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmmo.demo import build_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", nargs="?", default="demo", help="output folder (default: ./demo)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a matching build exists")
    args = parser.parse_args()
    paths = build_demo(Path(args.dir), force=args.force, progress=print)
    print(f"search spec: {paths.config}")


if __name__ == "__main__":
    main()
