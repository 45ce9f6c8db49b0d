"""What a search needs in device and host memory, known before any weight is loaded: sizes from the sources'
tensor shapes and config, for each place the Merger can keep its task vectors, and the one it will choose."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mmmo.merge.memory import (
    RESIDENT_FRACTION,
    itemsize,
    plan_memory,
    resident_budget,
    store_bytes,
    table_bytes,
)
from mmmo.merge.methods.registry import TableKind

# Tokens per scored sequence the scoring estimate assumes (capped at the model's context): lm-eval's own max_length
# for a model that states none, and about what a few-shot prompt and its answer take (gsm8k 5-shot: ~1300).
DEFAULT_SCORING_TOKENS = 2048
GIB = 2**30

PlacementName = Literal["resident + tables", "resident", "streamed"]


def size(n: int) -> str:
    """Bytes in GiB (MiB below a tenth of one, where GiB would read 0.00)."""
    if n == 0:
        return "0 GiB"
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 10**9 else f"{n / 1e6:.2f}M"


@dataclass(frozen=True)
class SourceSizes:
    """The merged tensors of one source: `numel` parameters in all, `largest` in the largest tensor."""

    numel: int
    largest: int
    n_models: int  # fine-tuned models beside the base

    @classmethod
    def of(cls, shapes: Mapping[str, tuple[int, ...]], n_models: int) -> SourceSizes:
        counts = [_numel(s) for s in shapes.values()]
        return cls(sum(counts), max(counts, default=0), n_models)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _first(config: Mapping[str, Any], *keys: str, default: int | None = None) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return default


@dataclass(frozen=True)
class ModelDims:
    """What scoring memory depends on, from a Hugging Face config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_positions: int | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelDims | None:
        """None when the config names no layer count, hidden size, head count or vocabulary."""
        text = config.get("text_config")
        cfg = {**config, **text} if isinstance(text, dict) else config  # multimodal wrappers nest the LM's fields
        layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
        hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
        heads = _first(cfg, "num_attention_heads", "n_head")
        vocab = _first(cfg, "vocab_size")
        if layers is None or hidden is None or heads is None or vocab is None:
            return None
        return cls(
            layers=layers, hidden=hidden, heads=heads,
            kv_heads=_first(cfg, "num_key_value_heads", default=heads) or heads,
            head_dim=_first(cfg, "head_dim", default=hidden // heads) or hidden // heads,
            intermediate=_first(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden) or 4 * hidden,
            vocab=vocab,
            max_positions=_first(cfg, "max_position_embeddings", "n_positions", "n_ctx", "seq_length"),
        )


@dataclass(frozen=True)
class ScoringEstimate:
    """Device bytes for scoring one batch of `batch` sequences of `tokens` tokens in the merge dtype."""

    batch: int
    tokens: int
    kv_cache: int  # keys and values of every layer
    logits: int  # every position's logits and their log-softmax (lm-eval's loglikelihood)
    activations: int  # one layer at a time: two hidden states, the MLP's three intermediates, the attention scores

    @classmethod
    def of(cls, dims: ModelDims, batch: int, tokens: int, dtype: torch.dtype) -> ScoringEstimate:
        tokens = min(tokens, dims.max_positions or tokens)
        per_token = batch * tokens * itemsize(dtype)
        return cls(
            batch=batch,
            tokens=tokens,
            kv_cache=per_token * 2 * dims.layers * dims.kv_heads * dims.head_dim,
            logits=per_token * 2 * dims.vocab,
            activations=per_token * (2 * dims.hidden + 3 * dims.intermediate + dims.heads * tokens),
        )

    @property
    def total(self) -> int:
        return self.kv_cache + self.logits + self.activations

    def describe(self) -> str:
        return (
            f"scoring estimate {size(self.total)}: batch {self.batch} × {self.tokens} tokens (assumed: "
            f"{DEFAULT_SCORING_TOKENS} per sequence, at most the model's context), KV cache {size(self.kv_cache)}, "
            f"logits {size(self.logits)}, activations {size(self.activations)}; longer sequences or larger batches "
            "need more"
        )


def scratch_bytes_per_entry(
    sparsification: TableKind | None, dtype: torch.dtype, n_models: int, *, tables: bool, device: torch.device
) -> int:
    """Bytes the merge's reused buffers (`mmmo.merge.kernels.workspace`) hold per entry of the largest tensor, for the whole
    search: without tables DARE draws float32 uniforms per model plus a mask and a masked copy, TIES selects on a
    magnitude copy (float32 for half types on CPU) with two boolean brackets. Chunk buffers are small."""
    if tables or sparsification is None:
        return 0
    size_ = itemsize(dtype)
    if sparsification == "random":
        return 4 * n_models + 2 * size_
    half_on_cpu = device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
    return (4 if half_on_cpu else size_) + 2


@dataclass(frozen=True)
class Placement:
    """Where one way of running the search puts its bytes, by part."""

    name: PlacementName
    device: dict[str, int]
    host: dict[str, int]

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())


@dataclass(frozen=True)
class RunMemoryPlan:
    """Every placement's bytes, what is free, and the placement the Merger will choose (None: decided at load time,
    the device not being measurable here)."""

    device: torch.device
    dtype: torch.dtype
    sizes: SourceSizes
    device_free: int | None  # on a CPU device: the host's available memory, shared with `host_available`
    host_available: int
    placements: tuple[Placement, ...]
    chosen: PlacementName | None
    reason: str
    scoring: ScoringEstimate | None

    @property
    def host_is_device(self) -> bool:
        return self.device.type != "cuda"

    def placement(self, name: PlacementName) -> Placement:
        return next(p for p in self.placements if p.name == name)

    def fits(self, p: Placement, *, one_sequence: bool = False) -> bool | None:
        """Whether `p` fits in what is free now (`one_sequence`: scoring one sequence at a time, the least it can);
        None when the device is not measurable here."""
        if self.device_free is None:
            return None
        device = p.device_bytes - (self._batch_extra() if one_sequence else 0)
        if self.host_is_device:
            return device + p.host_bytes <= self.device_free
        return device <= self.device_free and p.host_bytes <= self.host_available

    def _batch_extra(self) -> int:
        """Scoring bytes beyond one sequence at a time (every scoring term grows with the batch)."""
        return 0 if self.scoring is None else self.scoring.total - self.scoring.total // self.scoring.batch

    def refusal(self) -> str | None:
        """One line when no placement fits even scoring one sequence at a time (None when one does, or when that
        is only known at load time): the only case certain to run out of memory, so the only one refused."""
        if self.device_free is None or any(self.fits(p, one_sequence=True) for p in self.placements):
            return None
        least = self.placement("streamed")  # the fewest bytes on the device
        device = least.device_bytes - self._batch_extra()
        if self.host_is_device:
            need = f"it needs {size(device + least.host_bytes)} of memory ({size(self.device_free)} available)"
        else:
            need = (
                f"even with its task vectors streamed from host memory it needs {size(device)} on {self.device} "
                f"({size(self.device_free)} free) and {size(least.host_bytes)} of host memory "
                f"({size(self.host_available)} available)"
            )
        smaller = ", a smaller merge.dtype" if itemsize(self.dtype) > 2 else ""
        return f"this run does not fit in memory: {need}; use a device with more free memory{smaller} or fewer models"

    def choice_line(self) -> str:
        """One line: the placement chosen (or that it is chosen at load time) and why."""
        if self.chosen is None:
            return f"memory: placement chosen at load time ({self.reason})"
        p = self.placement(self.chosen)
        warn = "" if self.fits(p) else "; the estimate exceeds what is free now, so it may run out of memory"
        where = (
            f"{size(p.device_bytes + p.host_bytes)} of {size(self.device_free or 0)} available" if self.host_is_device
            else f"{size(p.device_bytes)} of {size(self.device_free or 0)} free on {self.device}, "
            f"{size(p.host_bytes)} of {size(self.host_available)} host memory"
        )
        return f"memory: task vectors {self.chosen} ({where}): {self.reason}{warn}"

    def lines(self) -> list[str]:
        """What `mmmo validate` prints: what is free, each placement's bytes, the choice and the scoring estimate."""
        dtype = str(self.dtype).removeprefix("torch.")
        if self.device_free is None:
            free = "free memory not measured here"
        elif self.host_is_device:
            free = f"its memory is the host's: {size(self.device_free)} available"
        else:
            free = f"{size(self.device_free)} free, host {size(self.host_available)} available"
        out = [
            f"memory: {_count(self.sizes.numel)} parameters × (base + {self.sizes.n_models} model(s)) in {dtype} "
            f"on {self.device} ({free}); from the tensor headers, no weights read"
        ]
        for p in self.placements:
            fits = self.fits(p)
            verdict = "" if fits is None else " — fits" if fits else " — does not fit"
            out.append(f"  {p.name}: device {size(p.device_bytes)}, host {size(p.host_bytes)}{verdict}")
        out.append(f"  {self.choice_line().removeprefix('memory: ')}")
        if self.scoring is not None:
            out.append(f"  {self.scoring.describe()}")
        return out


def plan_run(
    sizes: SourceSizes,
    dims: ModelDims | None,
    *,
    dtype: torch.dtype,
    device: torch.device,
    sparsification: TableKind | None,
    device_free: int | None,
    host_available: int,
    batch: int,
    tokens: int = DEFAULT_SCORING_TOKENS,
    precompute: bool = True,
    unmeasured: str = "",
    more_tables: Sequence[TableKind] = (),
) -> RunMemoryPlan:
    """The bytes of every placement the Merger can choose, and its choice by its own rule (`plan_memory`, with the
    budget the live model will leave of `device_free`; on a non-CUDA device `device_free` is the host's memory).

    `sparsification` is the first listed method's tables; `more_tables` those of the other methods of a search over
    methods, which the Merger keeps only where they fit beside (so they never decide the placement): the
    "resident + tables" placement shows them at their full size."""
    numel, n = sizes.numel, sizes.n_models
    live = numel * itemsize(dtype)
    store = store_bytes(numel, n, dtype)
    tables = table_bytes(numel, n, dtype, sparsification)
    scoring = None if dims is None else ScoringEstimate.of(dims, batch, tokens, dtype)

    def scratch(with_tables: bool) -> int:
        return sizes.largest * scratch_bytes_per_entry(sparsification, dtype, n, tables=with_tables, device=device)

    common = {"live model": live, "scoring": 0 if scoring is None else scoring.total}
    stored = {"base copy": live, "task vectors": store - live}
    placements = []
    others = sum(table_bytes(numel, n, dtype, k) for k in dict.fromkeys(more_tables) if k != sparsification)
    extra = {"other methods' tables (where they fit)": others} if others else {}
    if (tables or others) and precompute:
        placements.append(Placement("resident + tables", {**common, **stored, "tables": tables, **extra}, {}))
    placements.append(Placement("resident", {**common, **stored, "merge buffers": scratch(False)}, {}))
    # Streaming to a GPU copies one tensor's base and task vectors over at a time; on the host nothing is copied.
    staged = (n + 1) * sizes.largest * itemsize(dtype) if device.type == "cuda" else 0
    placements.append(
        Placement("streamed", {**common, "one tensor staged": staged, "merge buffers": scratch(False)}, stored)
    )
    if device_free is None:
        return RunMemoryPlan(device, dtype, sizes, None, host_available, tuple(placements), None,
                             unmeasured or f"{device} not measured", scoring)
    beside = device_free - live
    budget = resident_budget(beside)
    rule = plan_memory(numel, n, dtype, sparsification, device, max_resident_bytes=budget, want_tables=precompute)
    chosen: PlacementName = "resident + tables" if rule.tables else "resident" if rule.resident else "streamed"
    share = f"{RESIDENT_FRACTION:.0%} of the {size(max(0, beside))} the live model leaves ({size(budget)})"
    if chosen == "streamed":
        reason = f"base + task vectors ({size(store)}) exceed {share}"
    elif chosen == "resident + tables":
        reason = f"base, task vectors and tables ({size(store + tables)}) fit in {share}"
    elif tables and precompute:
        reason = f"base + task vectors ({size(store)}) fit in {share}, not with the tables ({size(tables)})"
    else:
        reason = f"base + task vectors ({size(store)}) fit in {share}"
    return RunMemoryPlan(device, dtype, sizes, device_free, host_available, tuple(placements), chosen, reason,
                         scoring)
