"""Merge in memory: load the sources once, keep their task vectors, write each candidate into one live model."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

import mmmo.merge.kernels.fused as fused_kernel
from mmmo.merge.kernels.fast_merge import abs_sum, merge_into
from mmmo.merge.kernels.geometric import GeometricMerge
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.memory import default_resident_budget, plan_memory
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.registry import MethodInfo, method_info
from mmmo.merge.methods.sparsify import dare_generator
from mmmo.merge.sources.checkpoint import check_compatible, open_checkpoint
from mmmo.merge.sources.layers import count_layers, layer_group_of
from mmmo.merge.sources.live_model import load_live_model, load_tokenizer, map_parameters
from mmmo.merge.sources.task_vectors import add_tables, load_task_vectors
from mmmo.runtime.errors import MmmoError

# From this many parameters the fused kernel's one-off compile (seconds) is repaid within a few candidates of a
# search; a single merge repays it only from a few billion.
FUSE_MIN_PARAMS = 50_000_000
ONE_MERGE_FUSE_MIN_PARAMS = 3_000_000_000


@dataclass(frozen=True)
class MergerOptions:
    """How a Merger merges (method and its mergekit parameters), where, and what it may load and keep.

    `normalize` / `rescale` None: the method's mergekit default. `max_resident_bytes` None: the memory budget of
    `mmmo.merge.memory`. `precompute`: search-wide tables where they fit. `fused` None: the compiled kernel for
    CPU models from `fuse_min_params` parameters. `parameters`: the method's method-level scalars
    (`MethodInfo.parameters`, e.g. slerp's `t`) by name, mergekit's defaults for the rest; `apply` may override
    them per merge. `with_base` False: mergekit's merge without base_model, for the methods that allow one
    (nuslerp, multislerp, karcher): the base folder is then only the origin of the task vectors. `methods`: the
    other methods `apply` may merge with (a search that chooses the method), each with its mergekit defaults and
    its own tables under the same memory rules; `method` is the one merged when `apply` names none.
    """

    method: str
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    layer_groups: int = 1
    seed: int = 0
    normalize: bool | None = None
    lambda_: float = 1.0
    rescale: bool | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    max_resident_bytes: int | None = None
    precompute: bool = True
    fused: bool | None = None
    fuse_min_params: int = FUSE_MIN_PARAMS
    parameters: Mapping[str, float] | None = None
    with_base: bool = True
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        method_info(self.method)  # MmmoError naming the supported methods
        object.__setattr__(self, "methods", tuple(m for m in dict.fromkeys(self.methods) if m != self.method))
        for m in self.methods:
            self.plan_for(m)
        if self.layer_groups < 1:
            raise MmmoError(f"layer_groups must be >= 1, got {self.layer_groups}")
        if not self.dtype.is_floating_point:
            raise MmmoError(f"dtype must be a floating-point type, got {self.dtype}")
        self.plan()  # a bad lambda fails here, before any checkpoint is loaded

    @property
    def info(self) -> MethodInfo:
        return method_info(self.method)

    def plan(self) -> MergePlan:
        """The per-tensor merge these options describe (eager: the Merger turns `fused` on once compiled)."""
        return MergePlan.of(self.method, normalize=self.normalize, lambda_=self.lambda_, rescale=self.rescale,
                            parameters=self.parameters)

    def plan_for(self, method: str) -> MergePlan:
        """The plan of one of `methods` (mergekit's defaults where `normalize` / `rescale` are None)."""
        return MergePlan.of(method, normalize=self.normalize, lambda_=self.lambda_, rescale=self.rescale)


class Merger:
    """Sources loaded once; `apply` writes a merge of them into the live `model` in place.

    Task vectors (model - base) are computed once in `dtype`. They stay on `device` when they fit in
    `max_resident_bytes` (default: `memory.RESIDENT_FRACTION` of free device memory, or of available RAM on
    CPU); otherwise they are kept in host memory (pinned for CUDA) and copied to the device one tensor at a time
    during each merge.

    With `precompute` (default), resident task vectors also get search-wide tables when those fit in the same
    budget too: for TIES the sorted magnitudes and their positions (`dtype` + int32 per parameter and model),
    which make every candidate's threshold and ties a lookup; for DARE the draws, sorted draws and L1 prefix sums
    (12 bytes per parameter and model), which replace the RNG and the rescale's norm pass; for Breadcrumbs each
    entry's magnitude rank (4 bytes), which makes its band one comparison; for DELLA the draws and ranks (8); for
    SCE each parameter's rank by its variance across models (4 bytes per parameter, not per model).
    `precompute_bytes` is their size (0 if off).

    `fused` runs the task-vector methods (task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs(_ties),
    della(_linear); SCE with its variance-rank table) in float32/64 as compiled kernels per tensor
    (`mmmo.merge.kernels.fused`; same tensors bit for bit, SCE in float64 to the last bits). None (default) turns it on
    for CPU models from `fuse_min_params` parameters; it is compiled while loading, and turned off, with a
    warning, if that fails. On CUDA it is opt-in (untested there).

    Options come as a `MergerOptions` or as its fields by keyword (`Merger(base, models, method="ties")`).
    """

    def __init__(
        self,
        base: str | os.PathLike[str],
        models: Sequence[str | os.PathLike[str]],
        options: MergerOptions | None = None,
        **fields: Any,
    ) -> None:
        if options is None:
            options = MergerOptions(**fields)
        elif fields:
            raise TypeError(f"pass MergerOptions or its fields, not both (got {sorted(fields)})")
        if not models:
            raise MmmoError("need at least one model to merge")
        for info in (options.info, *map(method_info, options.methods)):
            if info.geometric:
                info.check_models(len(models), options.with_base)
        self.options = options
        self.dtype = options.dtype
        self.device = torch.device(options.device)
        self.layer_groups = options.layer_groups

        self.base_ckpt = open_checkpoint(base, allow_pickle=options.allow_pickle)
        self.model_ckpts = [open_checkpoint(m, allow_pickle=options.allow_pickle) for m in models]
        check_compatible(self.base_ckpt, self.model_ckpts)
        self.base_path = self.base_ckpt.path
        self.model_paths = [c.path for c in self.model_ckpts]
        self.n_models = len(self.model_ckpts)

        self.model = load_live_model(self.base_ckpt, self.dtype, self.device,
                                     trust_remote_code=options.trust_remote_code)
        self._tokenizer, self._tokenizer_error = load_tokenizer(self.base_path,
                                                                trust_remote_code=options.trust_remote_code)
        self._params = map_parameters(self.model, self.base_ckpt)
        self.names: list[str] = list(self._params)
        self.n_layers = count_layers(self.base_ckpt.config, self.names)
        self._group = {n: layer_group_of(n, self.n_layers, options.layer_groups) for n in self.names}
        self.numel = sum(p.numel() for p in self._params.values())

        budget = options.max_resident_bytes
        if options.methods and budget is None:  # one budget for every method's tables, fixed before loading
            budget = default_resident_budget(self.device)
        memory = plan_memory(
            self.numel, self.n_models, self.dtype, options.info.table_kind, self.device,
            max_resident_bytes=budget, want_tables=options.precompute,
        )
        self.resident = memory.resident
        self.store_bytes = memory.store_bytes
        self.precomputed = memory.tables
        self.precompute_bytes = memory.table_bytes
        self.task_vectors = load_task_vectors(
            self.base_ckpt, self.model_ckpts, self.names, dtype=self.dtype, device=self.device,
            resident=memory.resident, sparsification=options.info.table_kind, with_tables=memory.tables,
            seed=options.seed,
        )
        self._more_tables(budget)
        self._workspace = Workspace()
        plan = options.plan()
        self.fused = self._compile_fused(plan)
        self.plan = replace(plan, fused=self.fused)
        self._geometric = GeometricMerge(plan.method, options.with_base, plan.chunk) if plan.method.geometric else None
        self._methods = {m: self._method_setup(options.plan_for(m)) for m in options.methods}
        self._methods[options.method] = (self.plan, self._geometric)

    def _more_tables(self, budget: int | None) -> None:
        """The tables of the other methods' sparsifications, each where it fits in `budget` beside what is kept."""
        kinds = {method_info(m).table_kind for m in self.options.methods} - {None, self.options.info.table_kind}
        for kind in sorted(kinds):  # type: ignore[type-var]
            left = None if budget is None else budget - self.precompute_bytes
            more = plan_memory(self.numel, self.n_models, self.dtype, kind, self.device, max_resident_bytes=left,
                               want_tables=self.options.precompute)
            add_tables(self.task_vectors, kind, with_tables=more.tables, seed=self.options.seed)
            self.precomputed = self.precomputed or more.tables
            self.precompute_bytes += more.table_bytes

    def _method_setup(self, plan: MergePlan) -> tuple[MergePlan, GeometricMerge | None]:
        """One more method's plan (fused where it compiles) and, for an interpolation, its merge."""
        plan = replace(plan, fused=self._compile_fused(plan))
        geometric = GeometricMerge(plan.method, self.options.with_base, plan.chunk) if plan.method.geometric else None
        return plan, geometric

    def _method(self, method: str | None) -> tuple[MergePlan, GeometricMerge | None]:
        """The plan (and interpolation) `apply` merges `method` with (None: the options' method)."""
        if method is None:
            return self.plan, self._geometric
        if method not in self._methods:
            raise MmmoError(f"this merger was not loaded for method {method!r} (its methods: {', '.join(self._methods)})")
        return self._methods[method]

    def _compile_fused(self, plan: MergePlan) -> bool:
        """Whether merges run the fused kernel: supported, wanted (or large enough on CPU), and compiled."""
        info, wanted = plan.method, self.options.fused
        if not (self.dtype in fused_kernel.FUSED_DTYPES and fused_kernel.fusable(info)):
            if wanted:
                warnings.warn(
                    "fused merge kernel not used: it runs the task-vector methods (task_arithmetic, ties, dare_*, "
                    "breadcrumbs*, della*, sce) in float32 or float64, not "
                    f"{info.name} in {str(self.dtype).removeprefix('torch.')}", stacklevel=3,
                )
            return False
        if wanted is None:
            wanted = self.device.type == "cpu" and self.numel >= self.options.fuse_min_params
        if not wanted:
            return False
        if info.sce:
            # its compiled passes select by the variance-rank table: without it (streamed, or no room) SCE is eager
            ranked = any(t.var_rank is not None for t in self.task_vectors.tables.values())
            return ranked and fused_kernel.warm_up_sce(self.n_models, dtype=self.dtype, device=self.device)
        return fused_kernel.warm_up(
            self.n_models, sparsification=info.sparsification, normalize=plan.normalize, lambda_=plan.lambda_,
            dtype=self.dtype, device=self.device, consensus=info.consensus, rescale=plan.rescale,
        )

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer (AutoTokenizer); MmmoError if the base folder has none that loads."""
        if self._tokenizer is None:
            raise MmmoError(self._tokenizer_error or f"no tokenizer in {self.base_path}")
        return self._tokenizer

    def group_of(self, name: str) -> int:
        """The layer group of a merged tensor."""
        return self._group[name]

    def live_tensor(self, name: str) -> Tensor:
        """The live model's parameter data for a checkpoint tensor name (what `apply` writes)."""
        return self._params[name].data

    # ---- merging

    def _check(
        self, weights: Any, densities: Any, plan: MergePlan | None = None
    ) -> tuple[Tensor, list[list[float]] | None]:
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

        w = shaped(torch.ones(n) if weights is None else weights, "weights")
        if not (plan or self.plan).method.uses_density or densities is None:
            return w, None
        d = shaped(densities, "densities")
        return w, [d[:, g].tolist() for g in range(k)]

    def _group_plans(self, parameters: Mapping[str, Any] | None, plan: MergePlan | None = None) -> list[MergePlan]:
        """The plan of each layer group, with `parameters` (name -> a value, or one per layer group) in it."""
        k = self.layer_groups
        per_group: dict[str, list[float]] = {}
        for key, v in (parameters or {}).items():
            values = [float(x) for x in v] if isinstance(v, (list, tuple, Tensor)) else [float(v)] * k
            if len(values) != k:
                raise MmmoError(f"parameter {key}: expected one value or {k} (one per layer group), got {len(values)}")
            per_group[key] = values
        return [(plan or self.plan).with_parameters({key: v[g] for key, v in per_group.items()}) for g in range(k)]

    def _merged(
        self, weights: Any, densities: Any, parameters: Mapping[str, Any] | None = None, method: str | None = None
    ) -> Iterator[tuple[str, Callable[[Tensor], Tensor]]]:
        """Yield (name, write) per tensor: `write(out)` puts the merge into `out` and returns |merged - base|_1."""
        plan, geometric = self._method(method)
        w, dens = self._check(weights, densities, plan)
        plans = self._group_plans(parameters, plan)
        if geometric is not None:
            yield from self._geometric_writes(w, plans, geometric)
            return
        random = plan.method.sparsification in ("random", "della_magprune")  # drawn masks: DARE, DELLA
        seed = self.options.seed
        for name in self.names:
            g = self._group[name]

            def write(out: Tensor, name: str = name, g: int = g) -> Tensor:
                base, deltas = self.task_vectors.fetch(name)
                tables = self.task_vectors.tables.get(name)
                gens = None
                if random and (tables is None or tables.uniforms is None):
                    gens = [dare_generator(seed, i, name, self.device) for i in range(self.n_models)]
                return merge_into(
                    out, plans[g], base, deltas, w[:, g], None if dens is None else dens[g],
                    generators=gens, tables=tables, workspace=self._workspace,
                )

            yield name, write

    def _geometric_writes(
        self, w: Tensor, plans: list[MergePlan], geometric: GeometricMerge
    ) -> Iterator[tuple[str, Callable[[Tensor], Tensor]]]:
        """(name, write) per tensor for an interpolating method (`mmmo.merge.kernels.geometric`)."""
        for name in self.names:
            g = self._group[name]

            def write(out: Tensor, name: str = name, g: int = g) -> Tensor:
                base, deltas = self.task_vectors.fetch(name)
                return geometric.merge_into(out, name, base, deltas, w[:, g].tolist(), plans[g].parameters)

            yield name, write

    @torch.no_grad()
    def apply(
        self, weights: Tensor | Sequence[Any] | None, densities: Tensor | Sequence[Any] | None = None,
        parameters: Mapping[str, Any] | None = None, *, method: str | None = None,
    ) -> float:
        """Write the merge into `self.model` in place; return mean |merged - base| over all merged entries.

        `weights`, `densities`: shaped (n_models, layer_groups) (a (n_models,) vector applies to every group);
        densities are ignored by methods without density and default to 1 (no sparsification); weights may be
        None for methods without (slerp, model_stock, karcher). `parameters`: method-level scalars by name (a
        value, or one per layer group) over the options' (`MergerOptions.parameters`). `method`: the options'
        `method` (None) or one of their `methods`, with its mergekit defaults.
        """
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for name, write in self._merged(weights, densities, parameters, method):
            total += write(self._params[name].data)
        return float(total) / max(1, self.numel)

    @torch.no_grad()
    def merged_state_dict(
        self, weights: Tensor | Sequence[Any] | None, densities: Tensor | Sequence[Any] | None = None,
        parameters: Mapping[str, Any] | None = None, *, method: str | None = None,
    ) -> dict[str, Tensor]:
        """The merge as CPU tensors keyed by checkpoint name, without touching the live model (see `apply`)."""
        out: dict[str, Tensor] = {}
        for name, write in self._merged(weights, densities, parameters, method):
            t = torch.empty(self.task_vectors.base[name].shape, dtype=self.dtype, device=self.device)
            write(t)
            out[name] = t.to("cpu")
        return out

    @torch.no_grad()
    def apply_source(self, index: int | None) -> float:
        """Load the base (None) or source model `index` unmerged into the live model; return mean |it - base|."""
        if index is None:
            for name in self.names:
                self._params[name].data.copy_(self.task_vectors.base[name], non_blocking=True)
            return 0.0
        if not 0 <= index < self.n_models:
            raise MmmoError(f"no source model {index} (there are {self.n_models})")
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        # The source's own tensors from disk: exact, not base + rounded task vector.
        for name, t in self.model_ckpts[index].read(self.names):
            self._params[name].data.copy_(t)
            _, deltas = self.task_vectors.fetch(name)
            total += abs_sum(deltas[index])
        return float(total) / max(1, self.numel)

    def reset(self) -> None:
        """Put the base weights back into the live model."""
        self.apply_source(None)

    @torch.no_grad()
    def live_state_dict(self) -> dict[str, Tensor]:
        """The live model's current merged parameters as CPU tensors, keyed by checkpoint name."""
        return {name: p.detach().to("cpu", copy=True) for name, p in self._params.items()}
