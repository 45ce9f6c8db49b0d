"""scripts/gpu_check.sh's offline install, on this CPU machine.

The fast tests resolve a tiny fake wheels folder (`--check-wheels`: pip --dry-run in a throw-away venv) with every
index, find-links and proxy of the environment pointed at a closed port: the install must use the folder alone,
and a missing wheel or a box without CUDA must be one line. The slow test installs a real `make gpu-wheels`
folder (for this Python) into a venv made from a stand-in for the GPU box's Python, one that holds torch only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
# The interpreter this test venv was made from: like a GPU box's Python, it has no mmmo installed.
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
PY_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, so any request fails at once

needs_venv = pytest.mark.skipif(
    subprocess.run([BASE_PYTHON, "-c", "import ensurepip, venv"], capture_output=True).returncode != 0,
    reason=f"{BASE_PYTHON} cannot make venvs with pip (no ensurepip)",
)


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment with every way pip could reach a server or another folder pointed at nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        OUT=str(tmp_path / "results"),
        GPU_CHECK_VENV=str(tmp_path / "venv"),
        GPU_CHECK_WORK=str(tmp_path / "work"),
        PIP_INDEX_URL=f"{CLOSED}/simple",
        PIP_EXTRA_INDEX_URL=f"{CLOSED}/extra",
        PIP_FIND_LINKS=str(tmp_path / "elsewhere"),
        PIP_RETRIES="0",
        PIP_TIMEOUT="2",
    )
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env[proxy] = CLOSED
    env.update(extra)
    return env


def run_script(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def fake_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal valid pure-Python wheel: one empty module and its metadata."""
    dist = f"{name.replace('-', '_')}-{version}"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    metadata += "".join(f"Provides-Extra: {e}\n" for e in sorted(set(re.findall(r'extra == "(\w+)"', metadata))))
    files = {
        f"{name.replace('-', '_')}/__init__.py": "",
        f"{dist}.dist-info/METADATA": metadata,
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def fake_wheels(tmp_path: Path) -> Path:
    """An `mmmo` that needs one dependency, and one more for its `dev` extra, with a MANIFEST like make gpu-wheels'."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    fake_wheel(folder, "mmmo", "0.1.0", ("mmmo-fake-dep>=1", 'mmmo-fake-tool; extra == "dev"'))
    fake_wheel(folder, "mmmo-fake-dep", "1.0")
    fake_wheel(folder, "mmmo-fake-tool", "2.0")
    (folder / "MANIFEST.txt").write_text(f"python: {PY_VERSION}\nextras: dev\n")
    return folder


@needs_venv
def test_check_wheels_installs_from_the_folder_alone(fake_wheels: Path, tmp_path: Path) -> None:
    proc = run_script(["--check-wheels", str(fake_wheels)], offline_env(tmp_path, GPU_CHECK_PYTHON=BASE_PYTHON))
    log = (tmp_path / "results" / "install.log").read_text()
    assert proc.returncode == 0, proc.stderr + log
    assert proc.stdout.startswith(f"gpu_check: {fake_wheels} installs offline for Python {PY_VERSION}")
    assert "Would install mmmo-0.1.0 mmmo-fake-dep-1.0 mmmo-fake-tool-2.0" in log
    assert f"Looking in links: {fake_wheels}" in log
    assert "Looking in indexes" not in log and "elsewhere" not in log
    assert not (tmp_path / "venv").exists()  # a dry run leaves no venv behind


@needs_venv
def test_a_missing_wheel_is_one_line_naming_it(fake_wheels: Path, tmp_path: Path) -> None:
    next(fake_wheels.glob("mmmo_fake_dep-*.whl")).unlink()
    proc = run_script(["--check-wheels", str(fake_wheels)], offline_env(tmp_path, GPU_CHECK_PYTHON=BASE_PYTHON))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"gpu_check: {fake_wheels} has no wheel of mmmo-fake-dep that Python {PY_VERSION}")
    assert proc.stderr.count("\n") == 1


def test_a_box_without_cuda_fails_at_once_in_one_line(fake_wheels: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_script([str(fake_wheels)], offline_env(tmp_path, GPU_CHECK_PYTHON=sys.executable))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"gpu_check: no CUDA device visible to torch {torch.__version__}")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert not (tmp_path / "venv").exists()  # nothing was installed


def test_wheels_for_another_python_or_no_folder_are_one_line(fake_wheels: Path, tmp_path: Path) -> None:
    (fake_wheels / "MANIFEST.txt").write_text("python: 3.99\n")
    env = offline_env(tmp_path, GPU_CHECK_PYTHON=sys.executable)
    proc = run_script(["--check-wheels", str(fake_wheels)], env)
    assert proc.returncode == 1
    assert proc.stderr == (f"gpu_check: {fake_wheels} holds wheels for Python 3.99 but {sys.executable} is Python "
                           f"{PY_VERSION}: remake it with make gpu-wheels GPU_PYTHON={PY_VERSION}\n")
    proc = run_script([str(tmp_path / "nowhere")], env)
    assert proc.returncode == 1 and proc.stderr.startswith("gpu_check: no wheels folder ")
    assert proc.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------------------------
# The real thing: ~110 wheels into a fresh venv (about a minute or two on 2 cores)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def box_python(root: Path) -> Path:
    """A stand-in for the GPU box's Python: a venv that holds torch and what torch needs, and nothing of mmmo's.
    The packages are symlinked from this test environment, not installed, so making it needs no network."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(root)], check=True)
    site = root / "lib" / f"python{PY_VERSION}" / "site-packages"
    seen: set[str] = set()
    todo = ["torch"]
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = distribution(name)
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}):
            if not (site / top).exists():
                (site / top).symlink_to(Path(str(dist.locate_file(top))))
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return root / "bin" / "python"


@pytest.mark.slow
@needs_venv
def test_a_real_wheels_folder_installs_offline_next_to_the_box_torch(tmp_path: Path) -> None:
    wheels = Path(os.environ.get("MMMO_GPU_WHEELS", REPO / ".gpu-wheels"))
    manifest = wheels / "MANIFEST.txt"
    if not manifest.is_file():
        pytest.skip(f"no wheels folder at {wheels}: run `make gpu-wheels` (needs the package index) first")
    if f"python: {PY_VERSION}\n" not in manifest.read_text():
        pytest.skip(f"{wheels} is not for Python {PY_VERSION}")
    with zipfile.ZipFile(next(wheels.glob("mmmo-*.whl"))) as zf:
        names, src = set(zf.namelist()), REPO / "src"
        rel = [(str(p.relative_to(src)), p) for p in (src / "mmmo").rglob("*.py")]
        if any(r not in names or zf.read(r) != p.read_bytes() for r, p in rel):
            pytest.skip(f"the mmmo wheel in {wheels} was built from other sources: rerun `make gpu-wheels`")
    box = box_python(tmp_path / "box")
    started = time.perf_counter()
    proc = run_script(["--install-only", str(wheels)], offline_env(tmp_path, GPU_CHECK_PYTHON=str(box)), timeout=900)
    seconds = time.perf_counter() - started
    log = (tmp_path / "results" / "install.log").read_text()
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    assert "Looking in indexes" not in log
    print(f"offline install of {wheels}: {seconds:.0f} s; {proc.stdout.strip().splitlines()[-1]}")
    venv = tmp_path / "venv"
    probe = ("import mmmo, torch, lm_eval, botorch, transformers, pytest; "
             "print(mmmo.__file__); print(torch.__file__)")
    out = subprocess.run([venv / "bin" / "python", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    mmmo_file, torch_file = out.stdout.split()
    assert mmmo_file.startswith(str(venv))  # mmmo from the wheel, in the venv
    assert torch_file.startswith(str(tmp_path / "box"))  # torch is the box's own, reused
    assert subprocess.run([venv / "bin" / "mmmo", "--help"], capture_output=True).returncode == 0
    # a second run with the same wheels reuses the venv
    again = run_script(["--install-only", str(wheels)], offline_env(tmp_path, GPU_CHECK_PYTHON=str(box)))
    assert again.returncode == 0 and "reusing" in again.stdout, again.stdout + again.stderr
