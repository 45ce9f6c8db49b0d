"""Download every wheel mmmo needs on an offline GPU box into one folder (`make gpu-wheels`).

    python scripts/gpu_wheels.py --python-version 3.12 [--glibc 2.28] [--arch x86_64] [--extras dev]
                                 [--dest .gpu-wheels] [--constraints constraints.txt]

Run it on a machine that reaches the package index. The box is assumed to have its own CUDA build of torch:
torch, triton and the nvidia-* / cuda-* runtime packages are left out (`--exclude`). Everything else is
resolved for the box's Python and platform, pinned by constraints.txt, and downloaded as wheels; mmmo itself
is built into a wheel from this checkout. A dependency that publishes only an sdist is built into a wheel here
with `pip wheel`, which is only right for pure-Python packages: a platform-specific result stops the run.
`scripts/gpu_check.sh DEST` installs the folder offline on the box.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXCLUDE = ("torch", "triton", "pytorch-triton*", "nvidia-*", "cuda-*")
MANIFEST = "MANIFEST.txt"
# pip names a dependency without a usable wheel in one of two ways, depending on whether a pin is involved
_MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)")
_UNAVAILABLE = re.compile(r"no matching distributions available for your environment:\n((?:[ \t]+\S+\n?)+)")


def missing_names(output: str) -> list[str]:
    """The projects pip reported as having no distribution it may use, in the order named."""
    names = [m.group(1) for m in _MISSING.finditer(output)]
    for m in _UNAVAILABLE.finditer(output):
        names += m.group(1).split()
    return list(dict.fromkeys(re.split(r"[<>=!~;\[ ]", n)[0] for n in names))


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def platforms(glibc: str, arch: str) -> list[str]:
    """Every manylinux tag a box with this glibc accepts. pip matches --platform tags exactly, so each
    manylinux_2_N from the box's glibc down to 2.17 (manylinux2014) is named, plus the legacy aliases."""
    major, minor = (int(p) for p in glibc.split("."))
    if major != 2 or minor < 17:
        raise SystemExit(f"gpu_wheels: glibc {glibc} is older than manylinux2014 (2.17)")
    tags = [f"manylinux_2_{n}_{arch}" for n in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch in ("x86_64", "i686"):
        tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return tags


def pins(constraints: Path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a constraints file."""
    out = {}
    for line in constraints.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def run(cmd: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    """Run pip (or anything), appending its output to `log`."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr + "\n")
    return proc


def build_sdist(name: str, version: str | None, out: Path, constraints: Path, log: Path, python: str) -> Path:
    """Build `name` (at its pinned version) into a wheel in `out`; it must come out pure Python for `python`."""
    spec = f"{name}=={version}" if version else name
    with tempfile.TemporaryDirectory() as tmp:
        proc = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-c", str(constraints), "-w", tmp, spec],
                   log)
        built = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not built:
            raise SystemExit(f"gpu_wheels: {spec} has no wheel for the target and `pip wheel` could not build one "
                             f"(see {log})")
        wheel = built[0]
        python_tag, abi, plat = wheel.stem.split("-")[-3:]
        # py3 (or py2.py3) runs on any Python 3; a wheel tagged for this machine's Python (py311) may not
        if abi != "none" or plat != "any" or not {"py3", "py" + python.replace(".", "")} & set(python_tag.split(".")):
            raise SystemExit(f"gpu_wheels: {spec} has no wheel for the target and builds to {wheel.name}, "
                             "which is not pure Python: build it on the GPU box's platform and add it to the folder")
        shutil.move(str(wheel), out / wheel.name)
        return out / wheel.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python-version", required=True, help="the GPU box's Python, e.g. 3.12")
    ap.add_argument("--glibc", default="2.28", help="the GPU box's glibc (`ldd --version`); default 2.28")
    ap.add_argument("--arch", default="x86_64", help="x86_64 or aarch64")
    ap.add_argument("--extras", default="dev", help="mmmo extras to include, comma-separated (default: dev)")
    ap.add_argument("--dest", type=Path, default=ROOT / ".gpu-wheels")
    ap.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    ap.add_argument("--exclude", default=",".join(DEFAULT_EXCLUDE),
                    help="comma-separated name patterns the box brings itself (default: %(default)s)")
    args = ap.parse_args()
    if not re.fullmatch(r"3\.\d+", args.python_version):
        raise SystemExit(f"gpu_wheels: --python-version must look like 3.12, got {args.python_version!r}")
    started = time.perf_counter()
    constraints = args.constraints.resolve()
    dest = args.dest.resolve()
    # Built next to the destination and renamed at the end: an interrupted run never leaves a half folder that
    # would install, and wheels of another Python or pin from an earlier run do not linger.
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = partial.with_name(dest.name + ".log")
    log.write_text("")
    exclude = [canonical(p) for p in args.exclude.split(",") if p.strip()]
    target = ["--only-binary=:all:", "--implementation", "cp", "--python-version", args.python_version]
    for tag in platforms(args.glibc, args.arch):
        target += ["--platform", tag]

    print(f"building the mmmo wheel from {ROOT}", flush=True)
    # setuptools reuses build/lib without removing files since deleted from src/: start from nothing.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    proc = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(partial), str(ROOT)], log)
    mmmo_wheels = sorted(partial.glob("mmmo-*.whl"))
    if proc.returncode != 0 or not mmmo_wheels:
        raise SystemExit(f"gpu_wheels: could not build the mmmo wheel (see {log})")
    requirement = f"{mmmo_wheels[0]}[{args.extras}]" if args.extras else str(mmmo_wheels[0])

    print(f"resolving mmmo[{args.extras}] for CPython {args.python_version}, glibc {args.glibc}, {args.arch}",
          flush=True)
    pinned = pins(constraints)
    built: list[str] = []
    report = partial / "report.json"
    with tempfile.TemporaryDirectory() as target_dir:
        for _ in range(50):  # one round per sdist-only dependency; 50 is far above any real count
            proc = run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--progress-bar", "off",
                        "--report", str(report), "--target", target_dir, *target, "--find-links", str(partial),
                        "-c", str(constraints), requirement], log)
            if proc.returncode == 0:
                break
            missing = missing_names(proc.stdout + proc.stderr)
            if not missing:
                raise SystemExit(f"gpu_wheels: resolving failed (see {log}): "
                                 f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            for name in missing:
                if canonical(name) in built:
                    raise SystemExit(f"gpu_wheels: {name} still has no usable wheel after building it (see {log})")
                print(f"  {name} has no wheel for the target: building it from its sdist here", flush=True)
                build_sdist(name, pinned.get(canonical(name)), partial, constraints, log, args.python_version)
                built.append(canonical(name))
        else:
            raise SystemExit(f"gpu_wheels: resolving did not settle (see {log})")

    resolved = {canonical(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    report.unlink()
    skipped = sorted(n for n in resolved if any(fnmatch.fnmatch(n, p) for p in exclude))
    wanted = sorted(f"{n}=={v}" for n, v in resolved.items() if n not in skipped and n != "mmmo" and n not in built)
    print(f"downloading {len(wanted)} wheels (leaving out what the box brings: {', '.join(skipped) or 'nothing'})",
          flush=True)
    proc = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *target, "-d", str(partial), *wanted],
               log)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_wheels: download failed (see {log}): {(proc.stderr.strip().splitlines() or ['?'])[-1]}")

    wheels = sorted(partial.glob("*.whl"))
    have = {canonical(w.name.split("-")[0]) for w in wheels}
    lost = sorted(set(resolved) - set(skipped) - have)
    if lost:
        raise SystemExit(f"gpu_wheels: resolved but not downloaded: {', '.join(lost)} (see {log})")
    total = sum(w.stat().st_size for w in wheels)
    digest = hashlib.sha256(constraints.read_bytes()).hexdigest()[:16]
    lines = [
        "# Wheels for an offline `scripts/gpu_check.sh`, written by scripts/gpu_wheels.py (make gpu-wheels).",
        f"python: {args.python_version}",
        f"glibc: {args.glibc}",
        f"arch: {args.arch}",
        f"extras: {args.extras}",
        f"constraints-sha256: {digest}",
        f"left-out (the box brings them): {' '.join(skipped) or '-'}",
        f"built-here-from-sdist (pure Python): {' '.join(built) or '-'}",
        f"wheels: {len(wheels)}",
        f"total-bytes: {total}",
        "",
        *(f"{w.stat().st_size:>12}  {w.name}" for w in wheels),
    ]
    (partial / MANIFEST).write_text("\n".join(lines) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    print(f"{len(wheels)} wheels, {total / 2**20:.0f} MiB in {dest} ({time.perf_counter() - started:.0f} s); "
          f"built from sdists here: {', '.join(built) or 'none'}")


if __name__ == "__main__":
    main()
