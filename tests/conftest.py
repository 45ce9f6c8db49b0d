"""Shared fixtures: caches inside the project, no hub access, and the demo models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"

# Before anything imports transformers/datasets: caches in the project, the network never used.
os.environ.setdefault("HF_HOME", str(CACHE / "hf_home"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests: the models and GPs here are tiny, and extra threads only
    wait on each other (or on other processes) on a busy 2-core CI box."""
    from mmmo.demo import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records each call of the fused merge kernel: True where it ran, False where it declined or fell back."""
    from mmmo.merge.kernels import fused

    calls: list[bool] = []
    real = fused.consensus_merge

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(fused, "consensus_merge", spy)
    return calls


@pytest.fixture(scope="session")
def demo_paths():
    """The demo problem (tiny base + three experts + local tasks), built once and cached across runs."""
    from mmmo.demo import build_demo

    return build_demo(Path(os.environ.get("MMMO_DEMO_DIR", CACHE / "demo-test")))


@pytest.fixture
def demo_spec(demo_paths, tmp_path):
    """Factory: `demo_spec(**sections)` writes a small demo search spec into tmp_path and returns its path."""
    from demo_specs import write_demo_spec

    def make(**sections: dict) -> Path:
        return write_demo_spec(demo_paths, tmp_path, **sections)

    return make


@pytest.fixture(scope="session", autouse=True)
def _leaves_nothing_in_the_system_temp(request: pytest.FixtureRequest):
    """The session must leave no `mmmo-*` or `ray*` entry in the system temp folder: tests use tmp_path (pytest's
    own pytest-of-* base is fine) and the code removes what it puts there."""
    import tempfile

    if hasattr(request.config, "workerinput"):  # a pytest-xdist worker: the others may be mid-test
        yield
        return
    tmp = Path(tempfile.gettempdir())

    def entries() -> set[str]:
        return {p.name for pattern in ("mmmo-*", "ray*") for p in tmp.glob(pattern)}

    before = entries()
    yield
    left = sorted(entries() - before)
    assert not left, f"new in {tmp} after the tests (unless another program made them meanwhile): {left}"
