"""Evaluate a batch on several GPUs or hosts with Ray actors, each holding its own merger and tasks."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmmo.evaluation.evaluator import CandidateEvaluator
from mmmo.run.documents import DocumentPlan, plan_differences, plan_from_json, plan_to_json
from mmmo.run.records import SourceScore, Trial
from mmmo.runtime.diskspace import is_disk_full
from mmmo.runtime.environment import use_project_cache
from mmmo.runtime.errors import MmmoError, one_line
from mmmo.runtime.signals import keep_signal_handlers
from mmmo.spec.schema import SearchSpec, spec_from_dict, spec_to_dict

if TYPE_CHECKING:
    from mmmo.merge.merger import Merger

# Unix socket paths are limited to 107 bytes; Ray puts its sockets a few folders below the temp dir.
_MAX_RAY_TMP_LEN = 60


def import_ray() -> Any:
    """The `ray` module, or an MmmoError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MmmoError(
            "evaluators in their own processes (evaluation.workers > 1, or optimizer.schedule: async) need Ray: "
            "pip install 'mmmo[ray]' (or set workers: 1 and schedule: batch)"
        ) from None
    return ray


def ray_temp_dir(spec: SearchSpec) -> str | None:
    """Ray's temp folder: evaluation.ray_tmp_dir, else under the run folder when its path is short enough.

    None when it is not: the pool then gives Ray a private folder in the system temp, removed at close.
    """
    if spec.evaluation.ray_tmp_dir:
        return str(Path(spec.evaluation.ray_tmp_dir).expanduser().resolve())
    preferred = spec.run_dir / "ray"
    return str(preferred) if len(str(preferred)) <= _MAX_RAY_TMP_LEN else None


# A Ray that mmmo starts is for this machine only: its GCS, raylet, agents and workers listen on loopback, never on
# every interface (an unauthenticated Ray that the network reaches runs anyone's code as this user: "ShadowRay").
# Ray binds its servers to loopback when the node's address is 127.0.0.1, but turns 127.0.0.1 into the machine's
# network address unless multi-node clusters are off: the switch below, which is Ray's own default on macOS and
# Windows. Read at ray.init only (the processes it starts get the address as an argument), so it is put back after.
LOOPBACK = "127.0.0.1"
_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(_CLUSTERS_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_CLUSTERS_ENV, None)
        else:
            os.environ[_CLUSTERS_ENV] = old_env


# It is also for this run only: on loopback any user of the machine could still connect to it and run code as this
# user, so it admits only clients that hold a token made for the run. Ray reads the token from the environment, which
# its processes (GCS, raylet, workers) inherit and which other users cannot read (/proc/PID/environ is private): it is
# never written to a file, neither in the run folder nor in ~/.ray/auth_token. A user who set any of these variables
# configured Ray's auth themselves, and Ray gets it as they set it.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _ray_auth_api() -> tuple[Any, Any]:
    """Ray's token-auth classes, or a one-line MmmoError where this Ray predates token authentication."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        import ray

        raise MmmoError(
            f"Ray {ray.__version__} has no token authentication, which closes the Ray mmmo starts to other users of "
            "this machine: pip install -U 'ray>=2.60', or set RAY_AUTH_MODE=disabled to run without it"
        ) from None
    return AuthenticationTokenLoader, Config


def _reload_ray_auth() -> None:
    """Make this process's Ray see the auth variables as they are now (it caches the mode and the token)."""
    AuthenticationTokenLoader, Config = _ray_auth_api()
    Config.initialize("")  # the mode first: a Ray thread that reloads a dropped token must not find token mode
    AuthenticationTokenLoader.instance().reset_cache()


class RunToken:
    """Token authentication with a fresh random token, set in this process's environment until `restore`."""

    def __init__(self) -> None:
        _ray_auth_api()  # refuse an old Ray before the environment is touched
        self._saved = {name: os.environ.get(name) for name in AUTH_ENV}
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, as Ray's own generator
        _reload_ray_auth()

    def restore(self) -> None:
        """Put the caller's auth variables back (after Ray is shut down)."""
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_auth()


def get_results(ray: Any, refs: Any) -> Any:
    """`ray.get(refs)`, except that an error a worker raised that mmmo would show in one line in process (its own
    errors, a full disk) is raised here as itself, not as Ray's wrapper whose message is the worker's traceback."""
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as err:
        if isinstance(err.cause, MmmoError) or (err.cause is not None and is_disk_full(err.cause)):
            raise err.cause from err
        raise


class RayWorker:
    """The body of a Ray actor: one CandidateEvaluator kept resident for the whole search."""

    def __init__(self, spec_data: dict[str, Any], name: str):
        use_project_cache(Path.cwd())
        spec = spec_from_dict(spec_data, Path.cwd(), check_paths=False, earlier=True)
        self.name = name
        self.evaluator = CandidateEvaluator.from_spec(spec, worker=name)

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, trial_data: dict[str, Any]) -> dict[str, Any]:
        return self.evaluator.evaluate(Trial.from_json(trial_data)).to_json()

    def evaluate_source(self, index: int | None) -> dict[str, Any]:
        return self.evaluator.evaluate_source(index).to_json()

    def documents(self) -> dict[str, Any]:
        return plan_to_json(self.evaluator.documents)


class RayPool:
    """N resident evaluators as Ray actors; a candidate whose worker dies is failed, then retried once elsewhere.

    An `EvaluatorPool` (see mmmo.evaluation.pool).
    """

    # What each actor runs: a class Ray can ship to its worker processes (tests install a faulty one here).
    worker_class: type[RayWorker] = RayWorker

    def __init__(self, spec: SearchSpec, on_attempt_failed: Callable[[Trial], None] | None = None):
        self.ray = import_ray()
        self.spec = spec
        self.on_attempt_failed = on_attempt_failed or (lambda t: None)
        self._started_ray = False
        self._own_tmp: str | None = None
        self._token: RunToken | None = None
        self.actors: list[Any] = []
        self._queue: list[Trial] = []  # started, waiting for an idle actor
        self._idle: list[Any] = []
        self._running: dict[Any, tuple[Trial, Any]] = {}  # result ref -> (trial, its actor)
        try:
            self._init_ray()
            self.actors = self._start_actors(spec.evaluation.workers)
            # Fail at start-up, in this process, if any worker cannot build its merger or tasks.
            self._pids = get_results(self.ray, [a.pid.remote() for a in self.actors])
            self._idle = list(self.actors)
        except BaseException:
            self.close()  # the caller gets no pool to close: stop the Ray it started and remove its folder
            raise

    def _init_ray(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        address = self.spec.evaluation.ray_address
        if address:
            with keep_signal_handlers():
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
        else:
            if not any(name in os.environ for name in AUTH_ENV):
                self._token = RunToken()
            tmp = ray_temp_dir(self.spec)
            if tmp is None:
                # The run folder's path is too long for Ray's sockets. A folder left in the system temp by each run
                # would pile up: this one is private and removed at close (evaluation.ray_tmp_dir keeps Ray's logs).
                tmp = self._own_tmp = tempfile.mkdtemp(prefix="mmmo-ray-")
            else:
                Path(tmp).mkdir(parents=True, exist_ok=True)
            with _loopback_only(), keep_signal_handlers():
                ray.init(
                    include_dashboard=False, _temp_dir=tmp, log_to_driver=False, configure_logging=False,
                    _node_ip_address=LOOPBACK,
                )
        self._started_ray = True

    def _start_actors(self, n: int) -> list[Any]:
        ray = self.ray
        gpus = ray.cluster_resources().get("GPU", 0)
        options: dict[str, Any] = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
        # Each actor loads the sources once; the spec travels as plain data (paths already resolved).
        actor_cls = ray.remote(max_restarts=0, max_task_retries=0, **options)(self.worker_class)
        data = spec_to_dict(self.spec)
        return [actor_cls.remote(data, f"worker-{i}") for i in range(n)]

    def worker_pids(self) -> list[int]:
        return list(self._pids)

    @property
    def slots(self) -> int:
        """How many trials can be scored at once: the actors alive."""
        return len(self.actors)

    def start(self, trial: Trial) -> None:
        """Score `trial` on an idle actor, or on the first to free (a `TrialWorkers` of optimizer.async_loop)."""
        self._queue.append(trial)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            trial, actor = self._queue.pop(0), self._idle.pop(0)
            self._running[actor.evaluate.remote(trial.to_json())] = (trial, actor)

    def next_finished(self, wait: bool) -> Trial | None:
        """A started trial that came back; None when none has yet and `wait` is False (or nothing was started).

        A trial whose actor died is failed, then retried once on another actor (`on_attempt_failed` hears of it).
        """
        ray = self.ray
        while True:
            self._dispatch()
            if not self._running:
                if self._queue:
                    raise MmmoError("every Ray worker has died; the finished evaluations are saved, resume to continue")
                return None
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=None if wait else 0)
            if not ready:
                return None
            trial, actor = self._running.pop(ready[0])
            try:
                # A full disk raised in the worker stops the search, as in process: every later candidate would hit it
                result = Trial.from_json(get_results(ray, ready[0]))
            except ray.exceptions.RayActorError as err:
                self.actors.remove(actor)
                failed = replace(
                    trial, status="failed", attempts=trial.attempts + 1,
                    error=f"worker died: {one_line(err, limit=200)}",
                )
                if failed.attempts >= 2:
                    return failed
                self.on_attempt_failed(failed)
                self._queue.insert(0, replace(failed, status="proposed", error=None))
                continue
            self._idle.append(actor)
            return result

    def evaluate(self, trials: list[Trial]) -> Iterator[Trial]:
        """Score trials on the idle actors, yielding each as it finishes (any order)."""
        for t in trials:
            self.start(t)
        for _ in trials:
            back = self.next_finished(wait=True)
            if back is None:
                raise MmmoError("the Ray workers returned nothing for a started trial")
            yield back

    def evaluate_sources(self, indices: Iterable[int | None]) -> list[SourceScore]:
        indices = list(indices)
        refs = [self.actors[k % len(self.actors)].evaluate_source.remote(i) for k, i in enumerate(indices)]
        return [SourceScore.from_json(d) for d in get_results(self.ray, refs)]

    def documents(self) -> DocumentPlan:
        """The documents the workers score, as each of them chose them (they must agree)."""
        plans = [plan_from_json(p) for p in get_results(self.ray, [a.documents.remote() for a in self.actors])]
        for other in plans[1:]:
            if plan_differences(plans[0], other):
                raise MmmoError(
                    f"Ray workers chose different documents ({'; '.join(plan_differences(plans[0], other))}): "
                    "their task data differ"
                )
        return plans[0]

    def local_merger(self) -> Merger | None:
        """None: the models live in the actors' processes; an export builds its own merger."""
        return None

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.actors, self._idle, self._running, self._queue = [], [], {}, []
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()
        if self._token is not None:
            self._token.restore()
            self._token = None
        if self._own_tmp is not None:
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None
