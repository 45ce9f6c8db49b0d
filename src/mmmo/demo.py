"""A self-contained demo problem: a tiny Llama base and three experts on synthetic tasks, with lm-eval tasks.

Skills (prompt -> answer): `arith` "add 47+5=" -> "52", `reverse` "rev abcd=" -> "dcba", `sort`
"sort dbca=" -> "abcd". The base learns the prompt format on a copy task ("copy abcd=" -> "abcd") and
sees each skill only rarely; each expert is fine-tuned from it on one skill (plus a replay of the
base's mixture), so the task vectors stay small and merging them actually pays off: the base is weak
at all three, each expert at its own one, a merge at several. Built locally, with no hub access.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mmmo.errors import MmmoError

# Bump when a code change alters what gets built: a cached build with an older version is rebuilt.
BUILD_VERSION = 1
SKILLS: tuple[str, ...] = ("arith", "reverse", "sort")
STAMP_NAME = ".mmmo-demo.json"
TASK_PREFIX = "demo_"

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
# Every character a prompt or answer can hold; the tokenizer maps each to one token.
_CHARS = _LETTERS + "0123456789" + " +=\n"
_OPS = {"copy": "copy", "arith": "add", "reverse": "rev", "sort": "sort"}


@dataclass(frozen=True)
class DemoParams:
    """Everything that determines the built demo; its hash (with BUILD_VERSION) keys the cache."""

    seed: int = 0
    hidden_size: int = 96
    intermediate_size: int = 192
    layers: int = 3
    heads: int = 4
    max_positions: int = 64
    batch_size: int = 64
    base_steps: int = 800
    base_lr: float = 2e-3
    # Share of the base's rows per skill (in SKILLS order); the rest are the copy task. Set per skill (some
    # are picked up far more easily than others) so that the base is weak to middling at each: each expert
    # then masters its own task, and merges beat every expert on the mean. Training is chaotic (another CPU
    # kernel set or seed gives another draw), and arithmetic is learned in a sudden jump, so the share is
    # chosen for what holds on every draw (scripts/demo_calibration.py, benchmarks/RESULTS.md): at 0.12 the
    # base missed arithmetic on 3 draws of 5 (0.04-0.16) and merges then lost to the arithmetic expert;
    # at 0.20 it learned it fully (0.98) and the arithmetic expert had nothing to add.
    base_skill_shares: tuple[float, ...] = (0.16, 0.02, 0.04)
    expert_steps: int = 300
    expert_lr: float = 7e-4
    expert_skill_share: float = 0.5  # the rest of an expert's rows replay the base's mixture
    warmup_steps: int = 30
    word_len: tuple[int, int] = (4, 7)
    eval_examples: int = 50
    eval_limit: int = 50  # the limit written into demo.yaml's objectives

    def digest(self) -> str:
        """A short hash of the parameters and BUILD_VERSION."""
        blob = json.dumps({"version": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


DEFAULT_PARAMS = DemoParams()


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


# --------------------------------------------------------------------------------------------- data


def sample_example(skill: str, rng: random.Random, word_len: tuple[int, int] = (4, 7)) -> tuple[str, str]:
    """One (prompt, answer) pair of a skill (`copy` or one of SKILLS); prompts end with '='."""
    if skill == "arith":
        a, b = rng.randint(10, 99), rng.randint(0, 9)
        return f"add {a}+{b}=", str(a + b)
    word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(*word_len)))
    if skill == "copy":
        answer = word
    elif skill == "reverse":
        answer = word[::-1]
    elif skill == "sort":
        answer = "".join(sorted(word))
    else:
        raise ValueError(f"unknown skill {skill!r}")
    return f"{_OPS[skill]} {word}=", answer


def heldout_examples(skill: str, params: DemoParams) -> list[tuple[str, str]]:
    """The evaluation examples of a skill: distinct prompts, never used in training."""
    rng = random.Random(f"{params.seed}-eval-{skill}")
    seen: dict[str, str] = {}
    while len(seen) < params.eval_examples:
        prompt, answer = sample_example(skill, rng, params.word_len)
        seen.setdefault(prompt, answer)
    return list(seen.items())


def base_mixture(params: DemoParams) -> dict[str, float]:
    """The base's training mixture: mostly the copy task (the format), each skill rarely."""
    shares = dict(zip(SKILLS, params.base_skill_shares))
    return {"copy": 1.0 - sum(shares.values()), **shares}


def expert_mixture(params: DemoParams, skill: str) -> dict[str, float]:
    """An expert's mixture: its skill, plus a replay of the base's mixture so that it keeps the rest."""
    keep = 1.0 - params.expert_skill_share
    mix = {s: keep * w for s, w in base_mixture(params).items()}
    mix[skill] += params.expert_skill_share
    return mix


class _Sampler:
    """Draws training examples from a skill mixture, skipping every held-out prompt."""

    def __init__(self, mixture: dict[str, float], heldout: set[str], seed: str, word_len: tuple[int, int]):
        self.skills = list(mixture)
        self.weights = [mixture[s] for s in self.skills]
        self.heldout = heldout
        self.rng = random.Random(seed)
        self.word_len = word_len

    def draw(self, n: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for skill in self.rng.choices(self.skills, self.weights, k=n):
            while True:
                prompt, answer = sample_example(skill, self.rng, self.word_len)
                if prompt not in self.heldout:
                    break
            out.append((prompt, answer))
        return out


# ---------------------------------------------------------------------------------------- tokenizer


def make_tokenizer(chars: str = _CHARS, model_max_length: int = DEFAULT_PARAMS.max_positions) -> Any:
    """A character-level `PreTrainedTokenizerFast` over `chars` that prepends <s>, like Llama's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*_SPECIALS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # "[\s\S]": every character, newline and space included, becomes its own piece
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def _encode_batch(
    examples: list[tuple[str, str]], vocab: dict[str, int], device: Any
) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and labels (loss on the answer and its newline only)."""
    import torch

    bos, pad = vocab["<s>"], vocab["<pad>"]
    rows = [([bos] + [vocab[c] for c in p], [vocab[c] for c in a + "\n"]) for p, a in examples]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        labels[i, len(p) : n] = torch.tensor(a)
        mask[i, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


# ----------------------------------------------------------------------------------------- training


def make_model(params: DemoParams, tokenizer: Any) -> Any:
    """A freshly initialised tiny `LlamaForCausalLM` (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.heads,
        max_position_embeddings=params.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(params.seed)
    return LlamaForCausalLM(config)


def train(
    model: Any,
    sampler: _Sampler,
    vocab: dict[str, int],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    seed: int,
    device: Any,
) -> float:
    """AdamW with linear warmup and cosine decay; returns the mean loss of the last 10% of steps."""
    import math

    import torch

    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    tail: list[float] = []
    for step in range(steps):
        ids, mask, labels = _encode_batch(sampler.draw(batch_size), vocab, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    model.eval()
    return sum(tail) / max(1, len(tail))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op torch threads (restored after).

    For models this small one thread is the robust choice: on a busy machine, two threads per
    process were measured 25x slower than one (OpenMP threads waiting on each other).
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------ task files


def task_yaml(skill: str, data_file: Path) -> dict[str, Any]:
    """The lm-eval task config of a skill, reading its held-out examples from `data_file`."""
    return {
        "task": f"{TASK_PREFIX}{skill}",
        "dataset_path": "json",
        # `datasets` resolves relative data_files against the process's cwd, not the YAML's folder,
        # so the path is absolute (rewritten by build_demo when the folder has moved).
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",  # a column name: no Jinja template to compile per document
        "doc_to_target": "answer",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 8},
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
            }
        ],
        "metadata": {"version": BUILD_VERSION},
    }


class _Dumper(yaml.SafeDumper):
    """Writes strings holding a newline in double quotes ("\\n"), which YAML's default style garbles."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_task_files(tasks_dir: Path, final_tasks_dir: Path) -> None:
    """The task YAMLs in `tasks_dir`, pointing at the JSONL files as they will sit in `final_tasks_dir`."""
    for skill in SKILLS:
        data_file = final_tasks_dir.resolve() / "data" / f"{skill}.jsonl"
        text = yaml.dump(task_yaml(skill, data_file), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        _write_if_changed(tasks_dir / f"{TASK_PREFIX}{skill}.yaml", text)


def _write_data_files(tasks_dir: Path, params: DemoParams) -> None:
    data = tasks_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    for skill in SKILLS:
        lines = [json.dumps({"prompt": p, "answer": a}) for p, a in heldout_examples(skill, params)]
        (data / f"{skill}.jsonl").write_text("\n".join(lines) + "\n")


def demo_spec(params: DemoParams, prefix: str = "", output_dir: str = "runs/demo") -> dict[str, Any]:
    """The demo's search spec; model and task paths are `prefix` + the demo-relative path."""
    objectives: list[dict[str, Any]] = [
        {"name": s, "task": f"{TASK_PREFIX}{s}", "metric": "exact_match", "limit": params.eval_limit}
        for s in SKILLS
    ]
    objectives.append({"name": "sparsity", "type": "sparsity"})
    return {
        "name": "demo",
        "base_model": f"{prefix}base",
        "models": [{"path": f"{prefix}experts/{s}", "name": s} for s in SKILLS],
        "merge": {"method": "dare_ties", "dtype": "float32", "seed": 0},
        "objectives": objectives,
        "tasks_dir": f"{prefix}tasks",
        "optimizer": {"strategy": "mm-mo", "initial": 10, "batches": 4, "candidates": 10, "batch_size": 5},
        "evaluation": {"device": "auto", "batch_size": 64},
        "output": {"dir": output_dir},
    }


def search_spec_for(demo: DemoPaths, *, limit: int | None = None, **sections: Any) -> dict[str, Any]:
    """A built demo's search spec with absolute paths, for tests and benchmarks.

    `limit` overrides every task's example count; each keyword section replaces that spec section, or
    updates it when both are mappings (`optimizer={"batches": 1}` keeps the other optimizer fields).
    """
    data = yaml.safe_load(demo.config.read_text())
    data["base_model"] = str(demo.base)
    data["models"] = [{"path": str(p), "name": n} for n, p in demo.experts.items()]
    data["tasks_dir"] = str(demo.tasks_dir)
    if limit is not None:
        for o in data["objectives"]:
            if o.get("type", "lm_eval") == "lm_eval":
                o["limit"] = limit
    for key, patch in sections.items():
        if isinstance(patch, dict) and isinstance(data.get(key), dict):
            data[key].update(patch)
        else:
            data[key] = patch
    return data


def _dump_spec(spec: dict[str, Any], header: str) -> str:
    return header + yaml.safe_dump(spec, sort_keys=False)


# ------------------------------------------------------------------------------------------- build


def _stamp_ok(root: Path, params: DemoParams) -> bool:
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
def _exclusive(root: Path) -> Iterator[None]:
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
    with _exclusive(root):
        # Under the lock no other build of `root` runs: any temp folder left beside it is from a
        # killed build.
        for stale in [
            *root.parent.glob(f".{root.name}.building-*"),
            *root.parent.glob(f".{root.name}.old-*"),
        ]:
            shutil.rmtree(stale, ignore_errors=True)
        if not force and _stamp_ok(root, params):
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
    import torch

    started = time.perf_counter()
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
            _Sampler(mixture, heldout, f"{params.seed}-base", params.word_len),
            vocab,
            steps=params.base_steps,
            lr=params.base_lr,
            batch_size=params.batch_size,
            warmup_steps=params.warmup_steps,
            seed=params.seed,
            device=dev,
        )
        say(f"base trained (final loss {loss:.3f}, {time.perf_counter() - started:.0f}s)")
        _save(base, tokenizer, tmp / "base")

    # The experts are independent: on CPU, train them in parallel processes of one thread each.
    n_workers = workers or (len(SKILLS) if dev.type == "cpu" and (os.cpu_count() or 1) > 1 else 1)
    jobs = [
        (str(tmp / "base"), str(tmp / "experts" / s), params, s, i, device, threads)
        for i, s in enumerate(SKILLS)
    ]
    if n_workers == 1:
        for job in jobs:
            loss = train_expert(*job)
            say(f"expert {job[3]} trained (final loss {loss:.3f}, {time.perf_counter() - started:.0f}s)")
    else:
        ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
        with concurrent.futures.ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
            futures = {pool.submit(train_expert, *job): job[3] for job in jobs}
            for fut in concurrent.futures.as_completed(futures):
                loss = fut.result()
                say(
                    f"expert {futures[fut]} trained (final loss {loss:.3f}, {time.perf_counter() - started:.0f}s)"
                )

    tasks = tmp / "tasks"
    _write_data_files(tasks, params)
    write_task_files(tasks, final / "tasks")
    header = "# The demo search: written by `mmmo demo`; paths are relative to this file.\n"
    (tmp / "demo.yaml").write_text(_dump_spec(demo_spec(params), header))
    stamp = {"version": BUILD_VERSION, "digest": params.digest(), "params": asdict(params)}
    # written last: its presence marks a complete build
    (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    say(f"demo built in {time.perf_counter() - started:.0f}s")


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
            _Sampler(
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
        _save(model, tokenizer, Path(out_dir))
    return loss


def _save(model: Any, tokenizer: Any, path: Path) -> None:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model.to(torch.device("cpu"))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def ensure_demo(cache_dir: Path, params: DemoParams = DEFAULT_PARAMS) -> DemoPaths:
    """Build the demo into `cache_dir` once; later calls reuse it (for tests and fixtures)."""
    return build_demo(cache_dir, params=params)


def use_project_cache(root: Path) -> Path:
    """Point Hugging Face caches (datasets' Arrow cache of the task JSONL) at `root`/hf_home.

    Respects an HF_HOME the user already set. Call before lm-eval reads a task; it also patches
    an already-imported `datasets`, which reads the variable at import time.
    """
    home = Path(os.environ.setdefault("HF_HOME", str(Path(root).resolve() / "hf_home")))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_DATASETS_CACHE = datasets_cache
    return home
