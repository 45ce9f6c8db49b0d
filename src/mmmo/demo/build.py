"""Building the demo into a folder, once: the folder layout, its cache stamp and lock, and the training runs."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mmmo.demo.files import write_data_files, write_demo_yaml, write_task_files
from mmmo.demo.model import make_model, make_tokenizer, save_model, torch_threads, train
from mmmo.demo.params import BUILD_VERSION, DEFAULT_PARAMS, DemoParams
from mmmo.demo.skills import SKILLS, SkillSampler, base_mixture, expert_mixture, heldout_examples
from mmmo.runtime.errors import MmmoError

STAMP_NAME = ".mmmo-demo.json"


@dataclass
class DemoPaths:
    """Where a built demo lives."""

    root: Path
    base: Path
    experts: dict[str, Path]  # skill -> expert folder, in SKILLS order
    tasks_dir: Path  # lm-eval task YAMLs (pass as TaskManager(include_path=...))
    config: Path  # demo.yaml, the search spec

    @classmethod
    def under(cls, root: Path) -> DemoPaths:
        root = root.resolve()
        return cls(
            root=root,
            base=root / "base",
            experts={s: root / "experts" / s for s in SKILLS},
            tasks_dir=root / "tasks",
            config=root / "demo.yaml",
        )


def is_complete_build(root: Path, params: DemoParams) -> bool:
    """True when `root` holds a complete build of exactly these parameters."""
    stamp = root / STAMP_NAME
    if not stamp.is_file():
        return False
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if data.get("digest") != params.digest():
        return False
    paths = DemoPaths.under(root)
    needed = [paths.base, *paths.experts.values()]
    return all((p / "config.json").is_file() and (p / "model.safetensors").is_file() for p in needed)


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """An inter-process lock on building `root`, so parallel callers (pytest-xdist, two shells) build once."""
    # In the temp folder, not beside `root`, so that no lock file litters the user's folder (and a prebuilt demo
    # in a read-only folder is still usable). The holder deletes the file before unlocking, so none is left.
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"mmmo-demo-{key}.lock"
    if sys.platform == "win32":  # no flock: no lock, as before, and no file to leave behind
        yield
        return
    import fcntl

    while True:
        fh = open(lock_path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            # A waiter may have opened the file just before the previous holder deleted it: it then holds a
            # lock on an orphaned inode that newcomers never see. Only a lock on the file the path names counts.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fh.fileno()), os.stat(lock_path)):
                    break
        except BaseException:
            fh.close()
            raise
        fh.close()
    try:
        yield
    finally:
        # Unlink while still holding the lock: every waiter then re-checks and starts over on a fresh file.
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()
        fh.close()  # releases the lock


def build_demo(
    out_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    params: DemoParams = DEFAULT_PARAMS,
    device: str = "cpu",
    threads: int = 1,
    workers: int | None = None,
) -> DemoPaths:
    """Build (or reuse) the demo in `out_dir`: base, three experts, lm-eval tasks and demo.yaml.

    A build is reused when its stamp matches `params` and BUILD_VERSION, unless `force`. The build
    happens in a sibling temp folder that is renamed into place, so an interrupted build is never
    mistaken for a complete one. `out_dir` must be new, empty, or a previous demo build.
    Training runs on `device` with `threads` torch threads per process; on CPU the three experts
    train in `workers` parallel processes (default: one each when there are 2+ cores).
    """
    say = progress or (lambda _msg: None)
    root = Path(out_dir).expanduser().resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(root):
        # Under the lock no other build of `root` runs: any temp folder left beside it is from a
        # killed build.
        for stale in [
            *root.parent.glob(f".{root.name}.building-*"),
            *root.parent.glob(f".{root.name}.old-*"),
        ]:
            shutil.rmtree(stale, ignore_errors=True)
        if not force and is_complete_build(root, params):
            write_task_files(root / "tasks", root / "tasks")  # a no-op unless the folder was moved
            say(f"demo already built in {root} (reusing it)")
            return DemoPaths.under(root)
        if root.exists() and not (root / STAMP_NAME).is_file() and any(root.iterdir()):
            raise MmmoError(f"{root} exists and is not a demo folder; give an empty or new folder")
        # not tempfile.mkdtemp: its 0700 mode would stick to the renamed folder
        tmp = root.with_name(f".{root.name}.building-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            _build_into(tmp, root, params, say, device, threads, workers)
            if root.exists():
                old = root.with_name(f".{root.name}.old-{os.getpid()}")
                root.rename(old)
                tmp.rename(root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return DemoPaths.under(root)


def _build_into(
    tmp: Path,
    final: Path,
    params: DemoParams,
    say: Callable[[str], None],
    device: str,
    threads: int,
    workers: int | None,
) -> None:
    """A complete build in `tmp` (task files pointing at `final`); the stamp, written last, marks it complete."""
    started = time.perf_counter()

    def elapsed() -> str:
        return f"{time.perf_counter() - started:.0f}s"

    _train_base(tmp / "base", params, say, elapsed, device, threads)
    _train_experts(tmp, params, say, elapsed, device, threads, workers)
    tasks = tmp / "tasks"
    write_data_files(tasks, params)
    write_task_files(tasks, final / "tasks")
    write_demo_yaml(tmp / "demo.yaml", params)
    stamp = {"version": BUILD_VERSION, "digest": params.digest(), "params": asdict(params)}
    # written last: its presence marks a complete build
    (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    say(f"demo built in {elapsed()}")


def _train_base(
    out_dir: Path,
    params: DemoParams,
    say: Callable[[str], None],
    elapsed: Callable[[], str],
    device: str,
    threads: int,
) -> None:
    """Train the base from scratch on its mixture and save it to `out_dir`."""
    import torch

    with torch_threads(threads):
        tokenizer = make_tokenizer()
        vocab = tokenizer.get_vocab()
        heldout = {p for s in SKILLS for p, _ in heldout_examples(s, params)}
        dev = torch.device(device)

        base = make_model(params, tokenizer)
        mixture = base_mixture(params)
        say(f"training the base ({params.base_steps} steps)")
        loss = train(
            base,
            SkillSampler(mixture, heldout, f"{params.seed}-base", params.word_len),
            vocab,
            steps=params.base_steps,
            lr=params.base_lr,
            batch_size=params.batch_size,
            warmup_steps=params.warmup_steps,
            seed=params.seed,
            device=dev,
        )
        say(f"base trained (final loss {loss:.3f}, {elapsed()})")
        save_model(base, tokenizer, out_dir)


def _train_experts(
    tmp: Path,
    params: DemoParams,
    say: Callable[[str], None],
    elapsed: Callable[[], str],
    device: str,
    threads: int,
    workers: int | None,
) -> None:
    """Fine-tune one expert per skill from `tmp/base` into `tmp/experts/<skill>`."""
    import torch

    # The experts are independent: on CPU, train them in parallel processes of one thread each.
    on_cpu = torch.device(device).type == "cpu"
    n_workers = workers or (len(SKILLS) if on_cpu and (os.cpu_count() or 1) > 1 else 1)
    jobs = [
        (str(tmp / "base"), str(tmp / "experts" / s), params, s, i, device, threads)
        for i, s in enumerate(SKILLS)
    ]
    if n_workers == 1:
        for job in jobs:
            loss = train_expert(*job)
            say(f"expert {job[3]} trained (final loss {loss:.3f}, {elapsed()})")
        return
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    with concurrent.futures.ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
        futures = {pool.submit(train_expert, *job): job[3] for job in jobs}
        for fut in concurrent.futures.as_completed(futures):
            loss = fut.result()
            say(f"expert {futures[fut]} trained (final loss {loss:.3f}, {elapsed()})")


def train_expert(
    base_dir: str, out_dir: str, params: DemoParams, skill: str, index: int, device: str, threads: int
) -> float:
    """Fine-tune the saved base on one skill and save the expert; returns its final loss."""
    import torch
    from transformers import LlamaForCausalLM

    with torch_threads(threads):
        tokenizer = make_tokenizer()
        model = LlamaForCausalLM.from_pretrained(base_dir)
        heldout = {p for s in SKILLS for p, _ in heldout_examples(s, params)}
        loss = train(
            model,
            SkillSampler(
                expert_mixture(params, skill), heldout, f"{params.seed}-expert-{skill}", params.word_len
            ),
            tokenizer.get_vocab(),
            steps=params.expert_steps,
            lr=params.expert_lr,
            batch_size=params.batch_size,
            warmup_steps=params.warmup_steps,
            seed=params.seed + 1 + index,
            device=torch.device(device),
        )
        save_model(model, tokenizer, Path(out_dir))
    return loss
