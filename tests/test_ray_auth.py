"""A local Ray that mmmo starts admits only clients holding a token made for the run; auth that a user configured
(or a cluster they point at) is left as they set it; the caller's environment is the same after the pool closes."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from mmmo.evaluation import ray_pool as parallel
from mmmo.evaluation.ray_pool import AUTH_ENV, RayPool
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import load_spec, spec_from_dict

pytest.importorskip("ray")


def _auth_env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in AUTH_ENV}


@pytest.fixture
def no_auth_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user who configured nothing about Ray's auth."""
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)


class StandInRay:
    """Just enough of Ray for a RayPool to start and close; records the auth variables that ray.init saw."""

    def __init__(self) -> None:
        self.up = False
        self.seen: dict[str, str | None] = {}
        self.init_args: dict[str, Any] = {}

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs: Any) -> None:
        self.up, self.seen, self.init_args = True, _auth_env(), kwargs

    def shutdown(self) -> None:
        self.up = False

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def remote(self, **_options: Any) -> Any:
        method = type("Method", (), {"remote": staticmethod(lambda *a: 0)})()
        handle = type("Handle", (), {"__getattr__": lambda self, name: method})
        return lambda _cls: type("ActorClass", (), {"remote": staticmethod(lambda *a: handle())})

    def get(self, refs: list[Any]) -> list[int]:
        return list(refs)

    def kill(self, _actor: Any) -> None:
        pass


def _spec(tmp_path: Path, **evaluation: Any) -> Any:
    data = {
        "name": "t", "base_model": "base", "models": ["a"],
        "objectives": [{"name": "acc", "task": "demo_arith", "metric": "exact_match"}],
        "evaluation": {"workers": 2, **evaluation}, "output": {"dir": str(tmp_path / "run")},
    }
    return spec_from_dict(data, tmp_path, check_paths=False)


def _start(spec: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[RayPool, StandInRay]:
    ray = StandInRay()
    monkeypatch.setattr(parallel, "import_ray", lambda: ray)
    return RayPool(spec), ray


def test_a_local_ray_gets_a_new_token_each_run_and_the_environment_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_auth_settings: None
) -> None:
    tokens = []
    for _ in range(2):
        pool, ray = _start(_spec(tmp_path), monkeypatch)
        assert ray.seen["RAY_AUTH_MODE"] == "token" and ray.seen["RAY_AUTH_TOKEN_PATH"] is None
        token = ray.seen["RAY_AUTH_TOKEN"] or ""
        assert re.fullmatch("[0-9a-f]{64}", token)  # 256 random bits
        assert ray.init_args["_node_ip_address"] == "127.0.0.1"
        pool.close()
        assert _auth_env() == dict.fromkeys(AUTH_ENV)  # nothing left behind in the caller's environment
        tokens.append(token)
    assert tokens[0] != tokens[1]


@pytest.mark.parametrize(
    "settings",
    [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token"}, {"RAY_AUTH_TOKEN": "c0ffee" * 8},
     {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/home/me/.ray/token"}],
    ids=["disabled", "token-mode", "own-token", "token-file"],
)
def test_auth_the_user_configured_reaches_ray_as_they_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_auth_settings: None, settings: dict[str, str]
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    before = _auth_env()
    pool, ray = _start(_spec(tmp_path), monkeypatch)
    assert ray.seen == before
    pool.close()
    assert _auth_env() == before


def test_a_cluster_address_is_joined_with_the_users_own_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_auth_settings: None
) -> None:
    pool, ray = _start(_spec(tmp_path, ray_address="10.0.0.5:6379"), monkeypatch)
    assert ray.init_args["address"] == "10.0.0.5:6379"
    assert ray.seen == dict.fromkeys(AUTH_ENV)  # no token of ours: the cluster has its own, or none
    pool.close()


# A client on this machine: another user's process would run the same. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes it
# dial 127.0.0.1 as given (Ray otherwise swaps in the machine's network address, where nothing listens).
CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
    print("CONNECTED", ray.cluster_resources().get("CPU"))
except Exception as err:
    print("REFUSED", type(err).__name__, err)
"""


def _client(address: str, home: Path, **auth: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    env.update(auth, HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, address], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_local_ray_refuses_clients_without_the_runs_token(
    demo_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_auth_settings: None
) -> None:
    import psutil
    import ray
    from demo_specs import write_demo_spec

    home = tmp_path / "home"  # no ~/.ray/auth_token here, for the pool or the clients
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    ray_tmp = tempfile.mkdtemp(prefix="mmmo-ray-auth-")  # short enough for Ray's sockets; its logs are read below
    spec = load_spec(write_demo_spec(demo_paths, tmp_path, evaluation={"workers": 2, "ray_tmp_dir": ray_tmp}))
    pool = RayPool(spec)  # the two workers started and answered: they hold the token
    try:
        token = os.environ["RAY_AUTH_TOKEN"]
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        clients = {
            "the run's token": _client(address, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
            "another token": _client(address, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)),
            "no auth": _client(address, home, RAY_AUTH_MODE="disabled"),
        }
        said = {name: c.communicate(timeout=300) for name, c in clients.items()}
        assert said["the run's token"][0].startswith("CONNECTED"), said["the run's token"]  # the address is right
        for name in ("another token", "no auth"):
            out, err = said[name]
            assert out.startswith("REFUSED") and "CONNECTED" not in out, (name, out, err[-2000:])
            assert "InvalidAuthToken: Authentication token is missing or incorrect" in err, (name, err[-2000:])
        assert set(pool.documents()) == {o.name for o in spec.task_objectives}  # the workers still answer the driver
        # The token is in no file (the run folder, Ray's logs and session files) and on no command line.
        assert token not in _files_text(spec.run_dir) + _files_text(Path(ray_tmp))
        me = psutil.Process()
        assert all(token not in " ".join(p.cmdline()) for p in [me, *me.children(recursive=True)])
    finally:
        pool.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert _auth_env() == dict.fromkeys(AUTH_ENV)
    assert not (home / ".ray").exists()  # Ray wrote no token file of its own


def test_a_ray_without_token_auth_is_refused_in_one_line_before_the_environment_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_auth_settings: None
) -> None:
    import ray._raylet

    monkeypatch.delattr(ray._raylet, "AuthenticationTokenLoader")  # as in a Ray from before token auth
    with pytest.raises(MmmoError, match=r"has no token authentication.*RAY_AUTH_MODE=disabled") as err:
        _start(_spec(tmp_path), monkeypatch)
    assert "\n" not in str(err.value)
    assert _auth_env() == dict.fromkeys(AUTH_ENV)
