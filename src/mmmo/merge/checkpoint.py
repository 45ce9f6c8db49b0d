"""Model checkpoints on disk: a Hugging Face folder's config and where each tensor lives, read without loading
the whole model (safetensors memory-mapped; pickled `.bin` weights only when allowed)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmmo.errors import MmmoError

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_SINGLE = "model.safetensors"
_PICKLE_INDEX = "pytorch_model.bin.index.json"
_PICKLE_SINGLE = "pytorch_model.bin"


@dataclass
class Checkpoint:
    """A Hugging Face model folder: its config and where each tensor lives (safetensors or, if allowed, pickle)."""

    path: Path
    config: dict[str, Any]
    files: dict[str, Path]  # tensor name -> file
    pickled: bool
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    _pickle_cache: dict[Path, dict[str, Tensor]] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor shapes read from file headers (safetensors) without loading the data."""
        if not self._shapes:
            if self.pickled:
                for f in sorted(set(self.files.values())):
                    for k, v in self._load_pickle(f).items():
                        self._shapes[k] = tuple(v.shape)
            else:
                from safetensors import safe_open

                for f in sorted(set(self.files.values())):
                    with safe_open(str(f), framework="pt", device="cpu") as sf:
                        for k in sf.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                            self._shapes[k] = tuple(sf.get_slice(k).get_shape())
        return self._shapes

    def _load_pickle(self, f: Path) -> dict[str, Tensor]:
        if f not in self._pickle_cache:
            self._pickle_cache[f] = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
        return self._pickle_cache[f]

    def read(self, names: Sequence[str]) -> Iterator[tuple[str, Tensor]]:
        """Yield (name, tensor) on CPU, opening each file once (memory-mapped)."""
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.files[n], []).append(n)
        for f, group in by_file.items():
            if self.pickled:
                data = self._load_pickle(f)
                for n in group:
                    yield n, data[n]
            else:
                from safetensors import safe_open

                with safe_open(str(f), framework="pt", device="cpu") as sf:
                    for n in group:
                        yield n, sf.get_tensor(n)

    def get(self, name: str) -> Tensor:
        return next(self.read([name]))[1]

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[str], Tensor]]:
        """A `name -> tensor` getter with every file opened once (memory-mapped) for the duration."""
        with contextlib.ExitStack() as stack:
            handles: dict[Path, Any] = {}

            def get(name: str) -> Tensor:
                f = self.files[name]
                if self.pickled:
                    return self._load_pickle(f)[name]
                if f not in handles:
                    from safetensors import safe_open

                    handles[f] = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
                return handles[f].get_tensor(name)

            yield get


def open_checkpoint(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Checkpoint:
    """Index a model folder; one-line MmmoError for a missing folder, config or weights, or refused pickles."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MmmoError(f"model folder not found: {p}")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise MmmoError(f"{p}: no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise MmmoError(f"{cfg_file}: invalid JSON ({err.msg} at line {err.lineno})") from None

    def from_index(index_file: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise MmmoError(f"{index_file}: not a valid weight index (no weight_map)") from None
        files = {name: p / rel for name, rel in weight_map.items()}
        missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if missing:
            raise MmmoError(f"{p}: shard(s) listed in {index_file.name} are missing: {', '.join(missing)}")
        return files

    if (p / _SAFETENSORS_INDEX).is_file():
        return Checkpoint(p, config, from_index(p / _SAFETENSORS_INDEX), pickled=False)
    singles = [p / _SAFETENSORS_SINGLE] if (p / _SAFETENSORS_SINGLE).is_file() else sorted(p.glob("*.safetensors"))
    if len(singles) == 1:
        from safetensors import safe_open

        with safe_open(str(singles[0]), framework="pt", device="cpu") as sf:
            names = list(sf.keys())
        return Checkpoint(p, config, {n: singles[0] for n in names}, pickled=False)
    if len(singles) > 1:
        raise MmmoError(f"{p}: several .safetensors files but no {_SAFETENSORS_INDEX}")
    has_pickle = (p / _PICKLE_INDEX).is_file() or (p / _PICKLE_SINGLE).is_file()
    if has_pickle and not allow_pickle:
        raise MmmoError(
            f"{p}: weights are pickled (.bin), which can run arbitrary code; convert them to safetensors "
            "or pass allow_pickle (merge.allow_pickle: true / --allow-pickle) if you trust the source"
        )
    if (p / _PICKLE_INDEX).is_file():
        return Checkpoint(p, config, from_index(p / _PICKLE_INDEX), pickled=True)
    if (p / _PICKLE_SINGLE).is_file():
        data = torch.load(str(p / _PICKLE_SINGLE), map_location="cpu", weights_only=True, mmap=True)
        ckpt = Checkpoint(p, config, {n: p / _PICKLE_SINGLE for n in data}, pickled=True)
        ckpt._pickle_cache[p / _PICKLE_SINGLE] = data
        return ckpt
    raise MmmoError(f"{p}: no weights found (expected {_SAFETENSORS_SINGLE} or {_SAFETENSORS_INDEX})")


def _arch(config: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    return str(config.get("model_type")), tuple(config.get("architectures") or ())


def check_compatible(base: Checkpoint, models: Sequence[Checkpoint]) -> None:
    """Same architecture, tensor names and shapes everywhere; else a one-line MmmoError naming the first culprit."""
    base_arch = _arch(base.config)
    base_shapes = base.shapes()
    for m in models:
        arch = _arch(m.config)
        if arch != base_arch:
            raise MmmoError(
                f"architecture mismatch: base {base.path} is {base_arch[0]} {list(base_arch[1])} "
                f"but {m.path} is {arch[0]} {list(arch[1])}"
            )
        shapes = m.shapes()
        for name, shape in base_shapes.items():
            if name not in shapes:
                raise MmmoError(f"tensor {name} is in base {base.path} but missing from {m.path}")
            if shapes[name] != shape:
                raise MmmoError(
                    f"tensor {name} has shape {list(shape)} in base {base.path} "
                    f"but {list(shapes[name])} in {m.path}"
                )
        extra = [n for n in shapes if n not in base_shapes]
        if extra:
            raise MmmoError(f"tensor {extra[0]} is in {m.path} but missing from base {base.path}")
