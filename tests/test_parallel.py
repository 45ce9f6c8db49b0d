"""Ray workers: the same journal as one worker (order aside), a killed worker's candidate retried elsewhere, and a
full disk in a worker stopping the search as it does in process."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mmmo
from mmmo.cli import app
from mmmo.evaluation.ray_pool import AUTH_ENV, RayPool, RayWorker, get_results, ray_temp_dir
from mmmo.run.store import fold_events, read_events
from mmmo.runtime.diskspace import DiskFull
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import load_spec
from mmmo.testing import worker_killed_on_trial

pytest.importorskip("ray")

OPT = {"initial": 4, "batches": 1, "candidates": 4, "batch_size": 2}


def _ray_temp_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mmmo-ray-*"))


def _by_id(run_dir: Path) -> dict[int, tuple[list[float], dict[str, float] | None, str]]:
    state = fold_events(read_events(run_dir / "trials.jsonl"))
    return {t.id: (t.x, t.objectives, t.status) for t in state.trials}


def test_two_workers_give_the_same_journal_as_one(
    demo_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demo_specs import write_demo_spec

    for name in AUTH_ENV:  # Ray's auth as a user who configured none gets it: the run's own token
        monkeypatch.delenv(name, raising=False)
    before = _ray_temp_folders()
    # the batch schedule: the same proposals whatever the number of workers (async ones depend on timing)
    batch = {**OPT, "schedule": "batch"}
    one = mmmo.search(write_demo_spec(demo_paths, tmp_path / "one", optimizer=batch), show_progress=False)
    spec_two = write_demo_spec(demo_paths, tmp_path / "two", optimizer=batch, evaluation={"workers": 2})
    two = mmmo.search(spec_two, show_progress=False)
    assert _by_id(two.run_dir) == _by_id(one.run_dir)
    workers = {t.worker for t in two.trials}
    assert workers == {"worker-0", "worker-1"}  # both actors did work
    # Ray's temp folder: under the run folder when the path is short enough for its sockets, else a private
    # folder in the system temp, removed at the end
    kept = ray_temp_dir(load_spec(spec_two))
    if kept is not None:
        assert Path(kept) == two.run_dir / "ray" and Path(kept).is_dir()
    else:
        assert _ray_temp_folders() == before


def test_two_workers_async_score_every_trial_once_and_journal_their_use(demo_paths, tmp_path: Path) -> None:
    from demo_specs import write_demo_spec

    spec = write_demo_spec(demo_paths, tmp_path, optimizer={**OPT, "batches": 2}, evaluation={"workers": 2})
    assert load_spec(spec).schedule == "async"  # the default with several workers
    result = mmmo.search(spec, show_progress=False)
    events = read_events(result.run_dir / "trials.jsonl")
    finished = [e["trial"]["id"] for e in events if e["event"] in ("done", "failed")]
    assert sorted(finished) == list(range(8))  # the budget, each trial once
    assert {t.worker for t in result.trials} == {"worker-0", "worker-1"}
    ends = [e for e in events if e["event"] == "batch_end"]
    assert [e["batch"] for e in ends] == [0, 1, 2]
    use = ends[-1]["schedule"]
    assert use["workers"] == 2 and 0 < use["busy_seconds"] <= 2 * use["wall_seconds"]
    assert [t.batch for t in result.trials] == [0] * 4 + [1, 1, 2, 2]
    report = (result.run_dir / "report.md").read_text()
    share = round(100 * use["busy_seconds"] / (2 * use["wall_seconds"]))
    assert f"- evaluators (optimizer.schedule auto: async): 2, busy {share}% of the search's wall time" in report


def test_one_worker_async_scores_in_a_ray_actor_while_the_next_candidate_is_proposed(
    demo_paths, tmp_path: Path
) -> None:
    from demo_specs import write_demo_spec

    spec = write_demo_spec(demo_paths, tmp_path, optimizer={**OPT, "batches": 2, "schedule": "async"})
    assert load_spec(spec).evaluators_in_ray  # one evaluator, in its own process
    result = mmmo.search(spec, show_progress=False)
    assert {t.worker for t in result.trials} == {"worker-0"}
    order = [(e["event"], e["trial"]["id"]) for e in read_events(result.run_dir / "trials.jsonl")
             if e["event"] in ("proposed", "done")]
    assert sorted(i for e, i in order if e == "done") == list(range(8))
    # each trial after the initial design is proposed while the one before it is being scored (in process, the
    # evaluator and the optimiser take turns: trial k is back before trial k + 1 is proposed)
    for k in range(4, 7):
        assert order.index(("proposed", k + 1)) < order.index(("done", k))


def test_a_killed_worker_fails_only_its_candidate_which_is_retried(
    demo_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demo_specs import write_demo_spec

    marker = tmp_path / "killed-once"
    # The worker that picks trial 1 kills itself, once.
    monkeypatch.setattr(RayPool, "worker_class", worker_killed_on_trial(1, marker))
    result = mmmo.search(
        write_demo_spec(demo_paths, tmp_path, optimizer=OPT, evaluation={"workers": 2}), show_progress=False
    )
    assert marker.exists()
    assert len(result.trials) == 6 and all(t.status == "done" for t in result.trials)
    events = read_events(result.run_dir / "trials.jsonl")
    retried = [e for e in events if e["event"] == "attempt_failed"]
    assert [e["trial"]["id"] for e in retried] == [1]
    assert "worker died" in retried[0]["trial"]["error"]
    trial1 = next(t for t in result.trials if t.id == 1)
    assert trial1.attempts == 2
    # after the death, everything ran on the surviving worker
    assert len({t.worker for t in result.trials if t.id >= 1}) == 1


def test_a_local_ray_listens_on_loopback_only(demo_paths, tmp_path: Path) -> None:
    """ShadowRay: an unauthenticated Ray that the network reaches runs anyone's code. The one mmmo starts binds
    loopback only (GCS, raylet, agents, the driver's and the actors' workers)."""
    import ipaddress
    import signal

    import psutil
    from demo_specs import write_demo_spec

    spec = load_spec(write_demo_spec(demo_paths, tmp_path, optimizer=OPT, evaluation={"workers": 2}))
    handler = signal.getsignal(signal.SIGTERM)
    pool = RayPool(spec)
    try:
        assert signal.getsignal(signal.SIGTERM) is handler  # ray.init's own handler would exit with no word
        me = psutil.Process()
        procs = {me.pid: "driver"} | {p.pid: p.name() for p in me.children(recursive=True)}
        listening = [
            (procs[c.pid], c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in procs
        ]
        names = {name for name, _, _ in listening}
        assert {"gcs_server", "raylet"} <= names and len(listening) >= 4, listening
        exposed = [x for x in listening if not ipaddress.ip_address(x[1].removeprefix("::ffff:")).is_loopback]
        assert exposed == []
    finally:
        pool.close()


def _worker_with_full_disk_on_trial(trial_id: int, error: Exception) -> type[RayWorker]:
    """A Ray worker class whose merge of trial `trial_id` raises `error`, inside the evaluator as a full disk would.

    Made inside a function so that Ray ships the class to its workers by value, `trial_id` and `error` included.
    """

    class FullDiskOnTrial(RayWorker):
        def evaluate(self, trial_data: dict[str, Any]) -> dict[str, Any]:
            if trial_data["id"] == trial_id:

                def apply(*_args: Any, **_kwargs: Any) -> float:
                    raise error

                self.evaluator.merger.apply = apply
            return super().evaluate(trial_data)

    return FullDiskOnTrial


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ENOSPC", "DiskFull"])
def test_a_full_disk_in_a_worker_stops_the_search_as_it_does_locally(
    demo_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Not a worker failure to retry elsewhere (the next candidate would hit the same disk): the search stops with
    the one line it says in process, exit code 2, and the trial stays pending in the journal for a resume."""
    from demo_specs import write_demo_spec

    run = tmp_path / "run"
    if kind == "ENOSPC":  # the errno says the disk is full, whatever the text (here not the usual one) says
        error: Exception = OSError(errno.ENOSPC, "cannot write the lm-eval cache")
        said = (
            f"error: no space left on the device of {run}; every finished evaluation is saved in trials.jsonl: "
            f"free some space, then continue with: mmmo resume {run}"
        )
    else:
        error = DiskFull("not enough free space for the lm-eval cache in /scratch: about 2 GB needed, 1 MB free")
        said = f"error: {error}"
    monkeypatch.setattr(RayPool, "worker_class", _worker_with_full_disk_on_trial(1, error))
    spec = write_demo_spec(demo_paths, tmp_path, optimizer=OPT, evaluation={"workers": 2})
    r = CliRunner().invoke(app, ["search", str(spec), "--quiet"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [said]
    events = read_events(run / "trials.jsonl")
    assert [e for e in events if e["event"] == "attempt_failed"] == []  # not retried as a dead worker
    trials = {t.id: t for t in fold_events(events).trials}
    assert trials[1].status == "proposed" and trials[1].attempts == 0  # pending: a resume evaluates it
    assert all(t.status in ("proposed", "done") for t in trials.values())


@pytest.mark.parametrize(
    "cause",
    [OSError(errno.ENOSPC, "cannot write"), DiskFull("not enough free space for x"), MmmoError("bad task")],
    ids=["ENOSPC", "DiskFull", "MmmoError"],
)
def test_what_a_worker_raised_reaches_the_driver_as_itself(cause: Exception) -> None:
    """A full disk or one of mmmo's errors in a worker, as it would be raised in process (one line, the errno kept);
    anything else stays Ray's error with the worker's traceback."""
    from ray.exceptions import RayTaskError

    class StandInRay:
        def __init__(self, err: Exception) -> None:
            self.err = RayTaskError("RayWorker.evaluate", "Traceback (most recent call last): ...", err)

        def get(self, refs: list[Any]) -> Any:
            raise self.err.as_instanceof_cause()  # what ray.get raises: a subclass of the cause's class too

    with pytest.raises(type(cause)) as got:
        get_results(StandInRay(cause), ["ref"])
    assert got.value is cause and not isinstance(got.value, RayTaskError)
    bug = RuntimeError("a bug")
    with pytest.raises(RayTaskError) as other:
        get_results(StandInRay(bug), ["ref"])
    assert other.value.cause is bug
