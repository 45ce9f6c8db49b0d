"""Merge in memory: load the sources once, keep their task vectors, write each candidate into one live model."""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmmo.errors import MmmoError
from mmmo.merge import fused as fused_kernel
from mmmo.merge.methods import (
    Precomputed,
    Workspace,
    abs_sum,
    dare_generator,
    dare_tables,
    merge_into,
    method_info,
    rescale_l1,
    sorted_magnitudes,
)

# From this many parameters the fused kernel's one-off compile (seconds) is repaid within a few candidates of a
# search; a single merge repays it only from a few billion.
FUSE_MIN_PARAMS = 50_000_000
ONE_MERGE_FUSE_MIN_PARAMS = 3_000_000_000

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|embed_in|embeddings|wte|wpe)(?:\.|$)")
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_SINGLE = "model.safetensors"
_PICKLE_INDEX = "pytorch_model.bin.index.json"
_PICKLE_SINGLE = "pytorch_model.bin"


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to (`model.layers.{i}.…`), or None for embeddings, norms and heads."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def layer_group_of(name: str, n_layers: int, groups: int) -> int:
    """Group of a tensor: layer i → floor(i·groups/n_layers); embeddings → 0; final norm, head, rest → groups-1."""
    if groups <= 1:
        return 0
    i = layer_index(name)
    if i is not None:
        return min(groups - 1, (i * groups) // max(1, n_layers))
    if _EMBEDDING.search(name):
        return 0
    return groups - 1


# --------------------------------------------------------------------------------------------------------------
# Checkpoints on disk


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


def _available_host_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def default_resident_budget(device: torch.device) -> int:
    """Bytes of task vectors that may stay on the device: 70% of what is free there now."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(0.7 * free)
    return int(0.7 * _available_host_bytes())


# --------------------------------------------------------------------------------------------------------------
# The merger


class Merger:
    """Sources loaded once; `apply` writes a merge of them into the live `model` in place.

    Task vectors (model - base) are computed once in `dtype`. They stay on `device` when they fit in
    `max_resident_bytes` (default: 70% of free device memory, or of available RAM on CPU); otherwise they are
    kept in host memory (pinned for CUDA) and copied to the device one tensor at a time during each merge.

    With `precompute` (default), resident task vectors also get search-wide tables when those fit in the same
    budget too: for TIES the sorted magnitudes and their positions (`dtype` + int32 per parameter and model),
    which make every candidate's threshold and ties a lookup; for DARE the draws, sorted draws and L1 prefix sums (12 bytes per parameter
    and model), which replace the RNG and the rescale's norm pass. `precompute_bytes` is their size (0 if off).

    `fused` runs ties and dare_ties in float32/64 as one compiled kernel per tensor (`mmmo.merge.fused`; same
    tensors bit for bit). None (default) turns it on for CPU models from `fuse_min_params` parameters; it is
    compiled while loading, and turned off, with a warning, if that fails. On CUDA it is opt-in (untested there).
    """

    def __init__(
        self,
        base: str | os.PathLike[str],
        models: Sequence[str | os.PathLike[str]],
        *,
        method: str,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        layer_groups: int = 1,
        seed: int = 0,
        normalize: bool | None = None,
        lambda_: float = 1.0,
        rescale: bool | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        max_resident_bytes: int | None = None,
        precompute: bool = True,
        fused: bool | None = None,
        fuse_min_params: int = FUSE_MIN_PARAMS,
    ) -> None:
        self.info = method_info(method)
        self.method = self.info.name
        if not models:
            raise MmmoError("need at least one model to merge")
        if layer_groups < 1:
            raise MmmoError(f"layer_groups must be >= 1, got {layer_groups}")
        if not dtype.is_floating_point:
            raise MmmoError(f"dtype must be a floating-point type, got {dtype}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.layer_groups = layer_groups
        self.seed = seed
        self.normalize = normalize
        self.lambda_ = float(lambda_)
        self.rescale = rescale

        self.base_ckpt = open_checkpoint(base, allow_pickle=allow_pickle)
        self.model_ckpts = [open_checkpoint(m, allow_pickle=allow_pickle) for m in models]
        check_compatible(self.base_ckpt, self.model_ckpts)
        self.base_path = self.base_ckpt.path
        self.model_paths = [c.path for c in self.model_ckpts]
        self.n_models = len(self.model_ckpts)

        self.model = self._load_live_model(trust_remote_code)
        self._tokenizer, self._tokenizer_error = self._load_tokenizer(trust_remote_code)
        self._params = self._map_parameters()
        self.names: list[str] = list(self._params)
        self.n_layers = self._count_layers()
        self._group = {n: layer_group_of(n, self.n_layers, layer_groups) for n in self.names}
        self.numel = sum(p.numel() for p in self._params.values())

        itemsize = torch.empty((), dtype=dtype).element_size()
        need = self.numel * itemsize * (self.n_models + 1)
        budget = default_resident_budget(self.device) if max_resident_bytes is None else max_resident_bytes
        self.resident = need <= budget
        self.store_bytes = need
        per_entry = {"magnitude": itemsize + 4, "random": 12}.get(self.info.sparsification or "", 0)
        extra = self.numel * self.n_models * per_entry
        self.precomputed = precompute and per_entry > 0 and self.resident and need + extra <= budget
        self.precompute_bytes = extra if self.precomputed else 0
        self._pre: dict[str, Precomputed] = {}
        self._base: dict[str, Tensor] = {}
        self._deltas: dict[str, Tensor] = {}
        self._l1: dict[str, Tensor] = {}
        self._workspace = Workspace()
        self._load_task_vectors()
        self.fused = self._compile_fused(fused, fuse_min_params)

    # ---- loading

    def _load_live_model(self, trust_remote_code: bool) -> Any:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": self.dtype, "trust_remote_code": trust_remote_code}
        kwargs["use_safetensors"] = not self.base_ckpt.pickled
        if self.device.type == "cuda":
            kwargs["device_map"] = {"": self.device}
        try:
            model = AutoModelForCausalLM.from_pretrained(str(self.base_path), **kwargs)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MmmoError(f"cannot load base model {self.base_path}: {first}") from None
        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        return model

    def _load_tokenizer(self, trust_remote_code: bool) -> tuple[Any, str | None]:
        """The base's tokenizer; merging alone does not need one, so a failure is reported only on use."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.base_path), trust_remote_code=trust_remote_code), None
        except (OSError, ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return None, f"cannot load the tokenizer of {self.base_path}: {first}"

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer (AutoTokenizer); MmmoError if the base folder has none that loads."""
        if self._tokenizer is None:
            raise MmmoError(self._tokenizer_error or f"no tokenizer in {self.base_path}")
        return self._tokenizer

    def _map_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Checkpoint name → live parameter, once per distinct parameter (tied weights are written once)."""
        aliases: dict[int, list[str]] = {}
        params: dict[int, torch.nn.Parameter] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
            params[id(p)] = p
        on_disk = set(self.base_ckpt.files)
        mapping: dict[str, torch.nn.Parameter] = {}
        for key, names in aliases.items():
            found = next((n for n in names if n in on_disk), None)
            if found is None:
                raise MmmoError(
                    f"parameter {names[0]} of the live model has no tensor of that name in {self.base_path} "
                    "(unsupported checkpoint layout)"
                )
            if params[key].dtype.is_floating_point:
                mapping[found] = params[key]
        return mapping

    def _count_layers(self) -> int:
        n = self.base_ckpt.config.get("num_hidden_layers")
        if isinstance(n, int) and n > 0:
            return n
        found = [layer_index(name) for name in self.names]
        idx = [i for i in found if i is not None]
        return max(idx) + 1 if idx else 1

    def _storage(self, shape: Sequence[int]) -> Tensor:
        if self.resident:
            return torch.empty(tuple(shape), dtype=self.dtype, device=self.device)
        return torch.empty(tuple(shape), dtype=self.dtype, pin_memory=self.device.type == "cuda")

    def _load_task_vectors(self) -> None:
        """Base copy and task vectors, one tensor name at a time (peak extra memory: one tensor per model)."""
        work = self.device if self.resident else torch.device("cpu")
        # Differences are taken in float32 (float64 stays float64) and rounded once to `dtype`.
        diff_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        random = self.info.sparsification == "random"
        with contextlib.ExitStack() as stack:
            base_get = stack.enter_context(self.base_ckpt.reader())
            model_gets = [stack.enter_context(c.reader()) for c in self.model_ckpts]
            for name in self.names:
                t = base_get(name)
                b = self._storage(t.shape)
                b.copy_(t)
                self._base[name] = b
                base_diff = t.to(device=work, dtype=diff_dtype)
                deltas = self._storage((self.n_models, *t.shape))
                for i, get in enumerate(model_gets):
                    deltas[i].copy_(get(name).to(device=work, dtype=diff_dtype) - base_diff)
                self._deltas[name] = deltas
                if self.precomputed and random:
                    gens = [dare_generator(self.seed, i, name, self.device) for i in range(self.n_models)]
                    u, u_sorted, prefix = dare_tables(deltas, gens)
                    self._pre[name] = Precomputed(uniforms=u, u_sorted=u_sorted, l1_prefix=prefix)
                elif self.precomputed:
                    values, positions = sorted_magnitudes(deltas)
                    self._pre[name] = Precomputed(sorted_mag=values, sorted_pos=positions)
                elif random:  # DARE's rescale needs each task vector's L1 norm: fixed, so computed once
                    self._l1[name] = torch.stack([rescale_l1(deltas[i]) for i in range(self.n_models)]).to(self.device)
                del base_diff

    def _compile_fused(self, wanted: bool | None, min_params: int) -> bool:
        """Whether merges run the fused kernel: supported, wanted (or large enough on CPU), and compiled."""
        if not (self.info.consensus and self.dtype in fused_kernel.FUSED_DTYPES):
            if wanted:
                warnings.warn(
                    f"fused merge kernel not used: it runs ties / dare_ties in float32 or float64, not "
                    f"{self.method} in {str(self.dtype).removeprefix('torch.')}", stacklevel=3,
                )
            return False
        if wanted is None:
            wanted = self.device.type == "cpu" and self.numel >= min_params
        if not wanted:
            return False
        normalize = self.info.default_normalize if self.normalize is None else self.normalize
        return fused_kernel.warm_up(
            self.n_models, sparsification=self.info.sparsification, normalize=normalize, lambda_=self.lambda_,
            dtype=self.dtype, device=self.device,
        )

    # ---- merging

    def _check(self, weights: Any, densities: Any) -> tuple[Tensor, list[list[float]] | None]:
        n, k = self.n_models, self.layer_groups

        def shaped(x: Any, what: str) -> Tensor:
            t = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
            if t.dim() == 1 and t.shape[0] == n:
                t = t[:, None].expand(n, k)
            if tuple(t.shape) not in ((n, k),):
                raise MmmoError(f"{what} must have shape ({n}, {k}) (models × layer groups), got {list(t.shape)}")
            if not torch.isfinite(t).all():
                raise MmmoError(f"{what} contain non-finite values")
            return t

        w = shaped(weights, "weights")
        if not self.info.uses_density or densities is None:
            return w, None
        d = shaped(densities, "densities")
        return w, [d[:, g].tolist() for g in range(k)]

    def _fetch(self, name: str) -> tuple[Tensor, Tensor]:
        base, deltas = self._base[name], self._deltas[name]
        if self.resident:
            return base, deltas
        return base.to(self.device, non_blocking=True), deltas.to(self.device, non_blocking=True)

    def _merged(self, weights: Any, densities: Any) -> Iterator[tuple[str, Callable[[Tensor], Tensor]]]:
        """Yield (name, write) per tensor: `write(out)` puts the merge into `out` and returns |merged - base|_1."""
        w, dens = self._check(weights, densities)
        random = self.info.sparsification == "random"
        for name in self.names:
            g = self._group[name]

            def write(out: Tensor, name: str = name, g: int = g) -> Tensor:
                base, deltas = self._fetch(name)
                pre = self._pre.get(name)
                gens = None
                if random and pre is None:
                    gens = [dare_generator(self.seed, i, name, self.device) for i in range(self.n_models)]
                return merge_into(
                    out, self.method, base, deltas, w[:, g], None if dens is None else dens[g],
                    normalize=self.normalize, lambda_=self.lambda_, rescale=self.rescale,
                    generators=gens, l1_norms=self._l1.get(name), precomputed=pre, workspace=self._workspace,
                    fused=self.fused,
                )

            yield name, write

    @torch.no_grad()
    def apply(self, weights: Tensor | Sequence[Any], densities: Tensor | Sequence[Any] | None = None) -> float:
        """Write the merge into `self.model` in place; return mean |merged - base| over all merged entries.

        `weights`, `densities`: shaped (n_models, layer_groups) (a (n_models,) vector applies to every group);
        densities are ignored by methods without density and default to 1 (no sparsification).
        """
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for name, write in self._merged(weights, densities):
            total += write(self._params[name].data)
        return float(total) / max(1, self.numel)

    @torch.no_grad()
    def merged_state_dict(
        self, weights: Tensor | Sequence[Any], densities: Tensor | Sequence[Any] | None = None
    ) -> dict[str, Tensor]:
        """The merge as CPU tensors keyed by checkpoint name, without touching the live model."""
        out: dict[str, Tensor] = {}
        for name, write in self._merged(weights, densities):
            t = torch.empty(self._base[name].shape, dtype=self.dtype, device=self.device)
            write(t)
            out[name] = t.to("cpu")
        return out

    @torch.no_grad()
    def apply_source(self, index: int | None) -> float:
        """Load the base (None) or source model `index` unmerged into the live model; return mean |it - base|."""
        if index is None:
            for name in self.names:
                self._params[name].data.copy_(self._base[name], non_blocking=True)
            return 0.0
        if not 0 <= index < self.n_models:
            raise MmmoError(f"no source model {index} (there are {self.n_models})")
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        # The source's own tensors from disk: exact, not base + rounded task vector.
        for name, t in self.model_ckpts[index].read(self.names):
            param = self._params[name]
            param.data.copy_(t)
            _, deltas = self._fetch(name)
            total += abs_sum(deltas[index])
        return float(total) / max(1, self.numel)

    def reset(self) -> None:
        """Put the base weights back into the live model."""
        self.apply_source(None)

    @torch.no_grad()
    def live_state_dict(self) -> dict[str, Tensor]:
        """The live model's current merged parameters as CPU tensors, keyed by checkpoint name."""
        return {name: p.detach().to("cpu", copy=True) for name, p in self._params.items()}

    def group_of(self, name: str) -> int:
        """The layer group of a merged tensor."""
        return self._group[name]
