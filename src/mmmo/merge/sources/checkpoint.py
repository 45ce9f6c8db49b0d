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

from mmmo.runtime.errors import MmmoError, one_line

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_SINGLE = "model.safetensors"
_PICKLE_INDEX = "pytorch_model.bin.index.json"
_PICKLE_SINGLE = "pytorch_model.bin"


def _error(text: str) -> MmmoError:
    """A one-line error; text quoted from a file (a tensor or shard name) may hold line breaks. Two long model
    paths fit in the limit."""
    return MmmoError(one_line(text, limit=2000))


def _safetensors(f: Path) -> Any:
    """`safe_open(f)` (use it in a `with`); a file it cannot read (truncated, a header that lies about its length,
    offsets or shapes, an unknown dtype) is a one-line MmmoError naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(f), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:
        raise MmmoError(f"{f}: not a readable safetensors file ({one_line(err)})") from None


def _tensor(handle: Any, f: Path, name: str) -> Tensor:
    """One tensor of an open safetensors file; a failure to read it is a one-line MmmoError naming both."""
    try:
        return handle.get_tensor(name)
    except Exception as err:  # noqa: BLE001 - SafetensorError and whatever torch raises for the bytes found
        raise MmmoError(f"{f}: cannot read tensor {name} ({one_line(err)})") from None


def _json_object(f: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; one-line MmmoError naming it otherwise."""
    try:
        data = json.loads(f.read_bytes())
    except json.JSONDecodeError as err:
        raise MmmoError(f"{f}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except (UnicodeDecodeError, RecursionError) as err:
        raise MmmoError(f"{f}: invalid JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise MmmoError(f"{f}: not a valid {what} (a JSON object expected, got {type(data).__name__})")
    return data


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
                for f in sorted(set(self.files.values())):
                    with _safetensors(f) as sf:
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
                with _safetensors(f) as sf:
                    for n in group:
                        yield n, _tensor(sf, f, n)

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
                    handles[f] = stack.enter_context(_safetensors(f))
                return _tensor(handles[f], f, name)

            yield get


def open_checkpoint(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Checkpoint:
    """Index a model folder; one-line MmmoError for a missing folder, config or weights, or refused pickles."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MmmoError(f"model folder not found: {p}")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise MmmoError(f"{p}: no config.json (not a Hugging Face model folder)")
    config = _json_object(cfg_file, "model config")

    def from_index(index_file: Path) -> dict[str, Path]:
        weight_map = _json_object(index_file, "weight index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MmmoError(f"{index_file}: not a valid weight index (no weight_map of tensor name -> file name)")
        outside = sorted({rel for rel in weight_map.values() if Path(rel).is_absolute() or ".." in Path(rel).parts})
        if outside:  # shards live in the model folder: an index may not point elsewhere on the machine
            raise _error(f"{index_file}: shard path(s) outside the model folder: {', '.join(outside)}")
        files = {name: p / rel for name, rel in weight_map.items()}
        missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if missing:
            raise _error(f"{p}: shard(s) listed in {index_file.name} are missing: {', '.join(missing)}")
        return files

    if (p / _SAFETENSORS_INDEX).is_file():
        return Checkpoint(p, config, from_index(p / _SAFETENSORS_INDEX), pickled=False)
    singles = [p / _SAFETENSORS_SINGLE] if (p / _SAFETENSORS_SINGLE).is_file() else sorted(p.glob("*.safetensors"))
    if len(singles) == 1:
        with _safetensors(singles[0]) as sf:
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
    archs = config.get("architectures") or ()
    return str(config.get("model_type")), tuple(map(str, archs if isinstance(archs, list) else [archs]))


def _vocab_hint(base: Checkpoint, model: Checkpoint) -> str:
    """Why two embeddings differ when the configs say so: another tokenizer's vocabulary."""
    a, b = base.config.get("vocab_size"), model.config.get("vocab_size")
    return f" (vocab_size {a} in base, {b} in this model: another tokenizer's vocabulary)" if a != b else ""


def check_compatible(base: Checkpoint, models: Sequence[Checkpoint]) -> None:
    """Same architecture, tensor names and shapes everywhere, from the files' headers alone (no weight is read);
    else a one-line MmmoError naming the first culprit."""
    base_arch = _arch(base.config)
    base_shapes = base.shapes()
    for m in models:
        arch = _arch(m.config)
        if arch != base_arch:
            raise _error(
                f"architecture mismatch: base {base.path} is {base_arch[0]} {list(base_arch[1])} "
                f"but {m.path} is {arch[0]} {list(arch[1])}"
            )
        shapes = m.shapes()
        for name, shape in base_shapes.items():
            if name not in shapes:
                raise _error(f"tensor {name} is in base {base.path} but missing from {m.path}")
            if shapes[name] != shape:
                raise _error(
                    f"tensor {name} has shape {list(shape)} in base {base.path} "
                    f"but {list(shapes[name])} in {m.path}{_vocab_hint(base, m)}"
                )
        extra = [n for n in shapes if n not in base_shapes]
        if extra:
            raise _error(f"tensor {extra[0]} is in {m.path} but missing from base {base.path}")
