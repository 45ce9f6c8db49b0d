"""A newcomer sees only mmmo's own lines: no library progress bars or expected warnings, unless asked (-v)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mmmo.runtime.quiet import expected_warnings, quiet_libraries

REPO = Path(__file__).resolve().parents[1]
# A demo build of a second or two (as test_demo's TINY): still trains in worker processes and saves models.
TINY = {
    "hidden_size": 16, "intermediate_size": 32, "layers": 1, "heads": 2, "batch_size": 4,
    "base_steps": 2, "expert_steps": 2, "warmup_steps": 1, "eval_examples": 5,
}
# `python -c DEMO_SCRIPT SAID_JSON PARAMS_JSON ARGS...`: `mmmo ARGS...` with the demo's params patched by
# PARAMS_JSON; writes the progress lines mmmo itself printed to SAID_JSON.
DEMO_SCRIPT = """
import json, sys
from dataclasses import replace
from pathlib import Path
from mmmo import demo
from mmmo.cli import app

said = []
build = demo.build_demo

def tiny_build(out_dir, *, progress, **kwargs):
    def say(msg):
        said.append(msg)
        progress(msg)
    return build(out_dir, progress=say, params=replace(demo.DEFAULT_PARAMS, **json.loads(sys.argv[2])), **kwargs)

demo.build_demo = tiny_build
try:
    app(sys.argv[3:])
finally:
    Path(sys.argv[1]).write_text(json.dumps(said))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    """The suite's environment without any progress-bar switch of the user's (mmmo alone must keep quiet), and a
    fresh datasets cache, so that datasets draws its "Generating test split" bar again."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DISABLE_PROGRESS_BARS") and k != "TQDM_DISABLE"}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "datasets-cache")
    return env


def _mmmo(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmmo", *args], capture_output=True, text=True, env=_env(tmp_path), cwd=REPO,
        timeout=900,
    )


def test_search_quiet_writes_nothing_on_stderr(demo_spec, tmp_path: Path) -> None:
    done = _mmmo(["search", "--quiet", str(demo_spec())], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    assert done.stdout == ""


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_validate_shows_library_bars_only_when_verbose(demo_spec, tmp_path: Path, verbose: bool) -> None:
    done = _mmmo([*(["-v"] if verbose else []), "validate", str(demo_spec())], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    if verbose:  # the check would see them: datasets' and lm-eval's tqdm bars
        assert "Generating test split" in done.stderr and "%|" in done.stderr
    else:
        assert done.stderr == ""


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_demo_build_prints_only_its_own_lines(tmp_path: Path, verbose: bool) -> None:
    said = tmp_path / "said.json"
    args = [*(["-v"] if verbose else []), "demo", "--dir", str(tmp_path / "demo")]
    done = subprocess.run(
        [sys.executable, "-c", DEMO_SCRIPT, str(said), json.dumps(TINY), *args],
        capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = json.loads(said.read_text())
    assert any(line.startswith("expert ") for line in lines)  # the experts were trained (in worker processes)
    if verbose:  # the check would see them: transformers' bars, in this process and in the workers
        assert "Loading weights" in done.stderr and "Writing model shards" in done.stderr
    else:
        assert done.stderr.splitlines() == lines


def test_quiet_libraries_hides_tqdm_inside_and_restores_it(monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from tqdm import tqdm

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with quiet_libraries():
        assert os.environ["TQDM_DISABLE"] == "1"  # for child processes
        list(tqdm(range(3), desc="hidden-bar"))
        list(tqdm(range(3), "hidden-positional", None, True, None, None, 0.1, 10.0, None, None, False))
    assert "TQDM_DISABLE" not in os.environ
    list(tqdm(range(3), desc="shown-bar"))
    err = capfd.readouterr().err
    assert "hidden" not in err and "shown-bar" in err


def test_quiet_libraries_keeps_a_users_tqdm_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "0")
    with quiet_libraries():
        assert os.environ["TQDM_DISABLE"] == "0"
    assert os.environ["TQDM_DISABLE"] == "0"


def test_expected_warnings_hide_only_what_they_name_and_show_when_verbose() -> None:
    def emit() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with expected_warnings((RuntimeWarning, "expected")):
                warnings.warn("expected: jitter added", RuntimeWarning, stacklevel=1)
                warnings.warn("expected, but another category", UserWarning, stacklevel=1)
                warnings.warn("unexpected", RuntimeWarning, stacklevel=1)
        return [str(w.message) for w in caught]

    assert emit() == ["expected, but another category", "unexpected"]
    with quiet_libraries(verbose=True):
        assert emit() == ["expected: jitter added", "expected, but another category", "unexpected"]
    assert emit() == ["expected, but another category", "unexpected"]


def test_search_api_hides_library_bars_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from tqdm import tqdm

    from mmmo import api
    from mmmo.runtime.errors import MmmoError

    drawn: list[bool] = []

    def draw_a_bar_and_stop(_spec: object) -> None:
        out = io.StringIO()
        list(tqdm(range(2), file=out))
        drawn.append(bool(out.getvalue()))
        raise MmmoError("stop here")

    monkeypatch.setattr(api, "load_spec", draw_a_bar_and_stop)
    for library_output in (True, False):
        with pytest.raises(MmmoError):
            api.search("spec.yaml", library_output=library_output)
    assert drawn == [True, False]  # by default a library call leaves the caller's bars alone
