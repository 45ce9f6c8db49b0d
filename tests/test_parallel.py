"""Ray workers: the same journal as one worker (order aside), and a killed worker's candidate retried elsewhere."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

import mmmo
from mmmo.config import load_spec
from mmmo.parallel import RayPool, ray_temp_dir
from mmmo.run_store import fold_events, read_events
from mmmo.testing import worker_killed_on_trial

pytest.importorskip("ray")

OPT = {"initial": 4, "batches": 1, "candidates": 4, "batch_size": 2}


def _ray_temp_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mmmo-ray-*"))


def _by_id(run_dir: Path) -> dict[int, tuple[list[float], dict[str, float] | None, str]]:
    state = fold_events(read_events(run_dir / "trials.jsonl"))
    return {t.id: (t.x, t.objectives, t.status) for t in state.trials}


def test_two_workers_give_the_same_journal_as_one(demo_paths, tmp_path: Path) -> None:
    from demo_specs import write_demo_spec

    before = _ray_temp_folders()
    one = mmmo.search(write_demo_spec(demo_paths, tmp_path / "one", optimizer=OPT), show_progress=False)
    spec_two = write_demo_spec(demo_paths, tmp_path / "two", optimizer=OPT, evaluation={"workers": 2})
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
