"""What mmmo puts in the system temp folder it removes: the demo build lock and Ray's private folder."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mmmo import demo
from mmmo.evaluation import ray_pool as parallel
from mmmo.evaluation.ray_pool import RayPool, ray_temp_dir
from mmmo.spec.schema import spec_from_dict


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private stand-in for the system temp folder (tempfile.gettempdir() returns it)."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_demo_lock_excludes_and_leaves_no_file(system_tmp: Path, tmp_path: Path) -> None:
    inside, most, lock = 0, 0, threading.Lock()

    def build() -> None:
        nonlocal inside, most
        for _ in range(5):
            # flock locks belong to open file descriptions: threads contend as processes would
            with demo.build_lock(tmp_path / "demo"):
                with lock:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.002)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # a waiter that wakes up on a lock file its predecessor deleted must not run beside one on the new file
    assert most == 1
    assert list(system_tmp.iterdir()) == []


def _spec(run_dir: Path) -> Any:
    data = {
        "name": "t", "base_model": "base", "models": ["a"],
        "objectives": [{"name": "acc", "task": "demo_arith", "metric": "exact_match"}],
        "evaluation": {"workers": 2}, "output": {"dir": str(run_dir)},
    }
    return spec_from_dict(data, run_dir, check_paths=False)


class FakeRay:
    """Just enough of Ray for RayPool to start, fail or close without starting a cluster."""

    def __init__(self, fail_start: bool = False) -> None:
        self.fail_start = fail_start
        self.temp_dir: str | None = None
        self.up = False

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs: Any) -> None:
        self.temp_dir, self.up = kwargs["_temp_dir"], True

    def shutdown(self) -> None:
        self.up = False

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def remote(self, **_options: Any) -> Any:
        class Handle:
            def __getattr__(self, _name: str) -> Any:
                return type("Method", (), {"remote": staticmethod(lambda *a: 0)})()

        return lambda _cls: type("ActorClass", (), {"remote": staticmethod(lambda *a: Handle())})

    def get(self, refs: list[Any]) -> list[int]:
        if self.fail_start:
            raise RuntimeError("a worker could not load its models")
        return list(refs)

    def kill(self, _actor: Any) -> None:
        pass


@pytest.mark.parametrize("fail_start", [False, True], ids=["closed", "failed-start"])
def test_ray_gets_a_private_temp_folder_for_a_long_run_path_and_it_is_removed(
    system_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_start: bool
) -> None:
    pytest.importorskip("ray")  # RayPool reads Ray's own constants even with a stand-in cluster
    spec = _spec(tmp_path / ("x" * 80) / "run")
    assert ray_temp_dir(spec) is None  # too long for Ray's socket paths
    fake = FakeRay(fail_start)
    monkeypatch.setattr(parallel, "import_ray", lambda: fake)
    if fail_start:
        with pytest.raises(RuntimeError, match="could not load"):
            RayPool(spec)
    else:
        pool = RayPool(spec)
        assert fake.temp_dir is not None and Path(fake.temp_dir).parent == system_tmp
        assert Path(fake.temp_dir).is_dir()
        pool.close()
    assert not fake.up
    assert list(system_tmp.iterdir()) == []


def test_ray_temp_folder_under_a_short_run_folder_is_kept() -> None:
    run = Path("/r/run")
    assert ray_temp_dir(_spec(run)) == str(run / "ray")
