"""The fast paths of Breadcrumbs, DELLA and SCE: the magnitude- and variance-rank tables, DELLA's one-pass rescale
norms and the compiled kernels (with and without sign election; SCE's two passes) give the eager / reference
merge, bit for bit (SCE in float64: to the last bits of its weights' float64 sums)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_fused_merge import _tensors, needs_compiler, same_bits
from tiny_models import make_family
from torch._dynamo.utils import counters

from mmmo.merge.kernels import fused
from mmmo.merge.kernels.fast_merge import merge_into
from mmmo.merge.kernels.sce import variance
from mmmo.merge.kernels.tables import (
    Precomputed,
    dare_tables,
    della_tables,
    magnitude_ranks,
    rescale_l1,
    variance_ranks,
)
from mmmo.merge.merger import Merger
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.reference import reference_delta, sce_delta, sce_mask
from mmmo.merge.methods.sparsify import dare_generator, della_rank_norm, outlier_band, outlier_mask, top_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")
W = [0.6, 0.25, 0.9]


def _gens() -> list[torch.Generator]:
    return [dare_generator(3, i, "t") for i in range(3)]


def _tables(method: str, deltas: torch.Tensor) -> Precomputed:
    if method.startswith("breadcrumbs"):
        return Precomputed(mag_rank=magnitude_ranks(deltas))
    if method == "dare_linear":
        u, u_sorted, prefix = dare_tables(deltas, _gens())
        return Precomputed(uniforms=u, u_sorted=u_sorted, l1_prefix=prefix)
    u, ranks = della_tables(deltas, _gens())
    return Precomputed(uniforms=u, ranks=ranks, l1_norms=torch.stack([rescale_l1(d) for d in deltas]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_magnitude_ranks_order_like_the_top_k_and_the_band(dtype: torch.dtype) -> None:
    _, deltas = _tensors(dtype)  # many equal magnitudes: ties at every threshold
    ranks = magnitude_ranks(deltas)
    numel = deltas[0].numel()
    assert ranks.dtype == torch.int32 and ranks.shape == (3, numel)
    for i in range(3):
        assert torch.equal(ranks[i].sort().values, torch.arange(numel, dtype=torch.int32))  # a permutation
        for k in (0, 1, 700, 5400, numel - 1, numel):
            assert torch.equal(ranks[i] < k, top_mask(deltas[i], k).reshape(-1)), (i, k)
        for density, gamma in ((0.02, 0.05), (0.3, 0.01), (0.97, 0.05)):  # the last drops none of the smallest
            k_inner, k_outer = outlier_band(numel, density, gamma)
            band = (ranks[i] >= k_inner) & (ranks[i] < k_outer)
            assert torch.equal(band, outlier_mask(deltas[i], density, gamma).reshape(-1)), (i, density, gamma)


def test_della_tables_hold_della_rank_norm_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(5)
    for shape in [(40, 30), (7,), (5, 1), (3, 4, 6)]:
        deltas = torch.round(torch.randn(2, *shape, generator=gen) * 8) / 8  # ties within rows
        for dtype in (torch.float32, torch.float16, torch.float64):
            _, ranks = della_tables(deltas.to(dtype), [None, None])
            for i in range(2):
                want = della_rank_norm(deltas[i].to(dtype)).reshape(-1)
                assert ranks.dtype == want.dtype and torch.equal(ranks[i], want), (shape, dtype)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_by_rank_table_is_the_reference(method: str) -> None:
    base, deltas = _tensors(torch.float32)
    tables = _tables(method, deltas)
    # 0.97 keeps every one of the smallest magnitudes (the band's outer cut keeps the whole row): the eager cut
    # path once dropped nothing then
    for densities, gamma in (([0.3, 0.55, 0.8], 0.01), ([0.02, 0.55, 0.97], 0.05), ([0.0, 0.5, 1.0], 0.05)):
        plan = MergePlan.of(method, parameters={"gamma": gamma})
        want = base + reference_delta(plan, base, deltas, W, densities)
        by_cuts, by_ranks = torch.empty_like(base), torch.empty_like(base)
        merge_into(by_cuts, plan, base, deltas, W, densities)
        merge_into(by_ranks, plan, base, deltas, W, densities, tables=tables)
        assert torch.equal(by_cuts, want) and torch.equal(by_ranks, want), (densities, gamma)


# (weights, densities, normalize, lambda, rescale, parameter): a zero weight, a zero density and a density of 1
# drop a model or keep it whole; each distinct (normalize, lambda != 1, rescale) is one compiled variant.
CASES = [
    ([0.0, 0.5, 1.0], [0.3, 0.0, 1.0], None, 1.0, None, None),
    ([0.6, 0.25, 0.9], [0.02, 0.55, 0.97], "other", 0.7, "other", 0.05),
]


@needs_compiler
@pytest.mark.parametrize("method", ["task_arithmetic", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernel_gives_the_eager_merge_bit_for_bit(method: str, dtype: torch.dtype,
                                                        kernel_calls: list[bool]) -> None:
    base, deltas = _tensors(dtype)
    tables = _tables(method, deltas)
    default = MergePlan.of(method)
    name = "gamma" if method.startswith("breadcrumbs") else "epsilon" if method.startswith("della") else None
    for w, d, normalize, lambda_, rescale, value in CASES:
        options = {
            "normalize": (not default.normalize) if normalize == "other" else None,
            "rescale": (not default.rescale) if rescale == "other" else None,
            "lambda_": lambda_,
            "parameters": None if value is None or name is None else {name: value},
        }
        eager, compiled = MergePlan.of(method, **options), MergePlan.of(method, fused=True, **options)
        want, got = torch.empty_like(base), torch.empty_like(base)
        stat_want = merge_into(want, eager, base, deltas, w, d, generators=_gens(), tables=tables)
        stat_got = merge_into(got, compiled, base, deltas, w, d, generators=_gens(), tables=tables)
        assert same_bits(got, want), (w, d, options)
        assert not torch.equal(got, base)
        assert stat_got.item() == pytest.approx(stat_want.item(), rel=1e-6)
    assert kernel_calls == [True] * len(CASES)


def test_breadcrumbs_without_its_rank_table_runs_eagerly(kernel_calls: list[bool]) -> None:
    base, deltas = _tensors(torch.float32)
    want, got = torch.empty_like(base), torch.empty_like(base)
    merge_into(want, MergePlan.of("breadcrumbs_ties"), base, deltas, W, [0.3, 0.5, 0.8])
    merge_into(got, MergePlan.of("breadcrumbs_ties", fused=True), base, deltas, W, [0.3, 0.5, 0.8])
    assert same_bits(got, want) and kernel_calls == []


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("fused_sparsifications"), 3)


@needs_compiler
@pytest.mark.parametrize("method", ["breadcrumbs_ties", "della_linear"])
def test_merger_with_the_fused_kernel_writes_the_same_model(method: str, family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    eager = Merger(base, experts, method=method, layer_groups=2, seed=1)
    compiled = Merger(base, experts, method=method, layer_groups=2, seed=1, fused=True)
    assert not eager.fused and compiled.fused and fused.available()
    w = torch.tensor([[0.7, 0.2], [0.0, 0.9], [0.5, 0.5]])
    d = torch.tensor([[0.4, 1.0], [0.6, 0.3], [0.05, 0.8]])
    graphs = counters["stats"]["unique_graphs"]
    s_eager, s_compiled = eager.apply(w, d), compiled.apply(w, d)
    assert counters["stats"]["unique_graphs"] == graphs  # compiled while loading
    assert s_compiled == pytest.approx(s_eager, rel=1e-6) and s_eager > 0
    live_eager, live_compiled = eager.live_state_dict(), compiled.live_state_dict()
    for name, t in live_eager.items():
        assert same_bits(live_compiled[name], t), name


def test_sce_with_its_variance_tables_writes_the_same_model(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    with_tables = Merger(base, experts, method="sce", layer_groups=2)
    without = Merger(base, experts, method="sce", layer_groups=2, precompute=False)
    assert with_tables.precomputed and not without.precomputed
    numel = with_tables.numel
    assert with_tables.precompute_bytes == numel * 4  # each parameter's int32 rank by variance
    for name in with_tables.names:
        tables = with_tables.task_vectors.tables[name]
        _, deltas = with_tables.task_vectors.fetch(name)
        var = torch.var(deltas.reshape(3, -1), dim=0, unbiased=False)
        assert tables.var_rank is not None and tables.var_nonzero == int(torch.count_nonzero(var))
        for k in (0, 7, tables.var_nonzero // 2):
            assert torch.equal(tables.var_rank < k, top_mask(var, k)), (name, k)
    for topk in (0.4, [1.0, 0.25]):
        s_with = with_tables.apply(None, parameters={"select_topk": topk})
        s_without = without.apply(None, parameters={"select_topk": topk})
        assert s_with == pytest.approx(s_without, rel=1e-12) and s_with > 0
        live_with, live_without = with_tables.live_state_dict(), without.live_state_dict()
        for name, t in live_without.items():
            assert same_bits(live_with[name], t), (topk, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_variance_ranks_select_as_the_reference_with_ties(dtype: torch.dtype) -> None:
    _, deltas = _tensors(dtype)  # many equal variances
    flat = deltas.reshape(3, -1)
    rank, nonzero = variance_ranks(variance(flat))
    assert nonzero == int(torch.count_nonzero(variance(flat)))
    for topk in (0.0, 0.1, 0.5, 0.999):
        assert torch.equal(rank < int(nonzero * topk), sce_mask(flat, topk)), topk


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_sce_gives_the_eager_merge(dtype: torch.dtype) -> None:
    base, deltas = _tensors(dtype)
    rank, nonzero = variance_ranks(variance(deltas.reshape(3, -1)))
    tables = Precomputed(var_rank=rank, var_nonzero=nonzero)
    for topk in (0.3, 1.0, 0.0):
        eager = MergePlan.of("sce", parameters={"select_topk": topk})
        compiled = MergePlan.of("sce", fused=True, parameters={"select_topk": topk})
        want, got = torch.empty_like(base), torch.empty_like(base)
        stat_want = merge_into(want, eager, base, deltas, W, [1.0] * 3, tables=tables)
        stat_got = merge_into(got, compiled, base, deltas, W, [1.0] * 3, tables=tables)
        # the same operations in the same order; only the weights' float64 sums of squares are summed in another
        # order: rounded to float32 they are the same (but for a 1-ulp chance), in float64 they differ in the last bits
        if dtype == torch.float32:
            assert same_bits(got, want), topk
        else:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        assert stat_got.item() == pytest.approx(stat_want.item(), rel=1e-9)
        reference = base + sce_delta(deltas, topk)
        torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-7)
    assert fused.available()


@needs_compiler
def test_merger_runs_sce_compiled_and_writes_the_same_model(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    eager = Merger(base, experts, method="sce", layer_groups=2)
    compiled = Merger(base, experts, method="sce", layer_groups=2, fused=True)
    assert not eager.fused and compiled.fused and compiled.precomputed
    # the compiled passes select by the variance-rank table: without the tables SCE stays eager
    assert not Merger(base, experts, method="sce", layer_groups=2, fused=True, precompute=False).fused
    graphs = counters["stats"]["unique_graphs"]
    for topk in (0.4, [1.0, 0.25]):
        s_eager = eager.apply(None, parameters={"select_topk": topk})
        s_compiled = compiled.apply(None, parameters={"select_topk": topk})
        assert s_compiled == pytest.approx(s_eager, rel=1e-9) and s_eager > 0
        live_eager, live_compiled = eager.live_state_dict(), compiled.live_state_dict()
        for name, t in live_eager.items():
            assert same_bits(live_compiled[name], t), (topk, name)
    assert counters["stats"]["unique_graphs"] == graphs  # compiled while loading


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_task_arithmetic_in_the_kernel_is_eager_bit_for_bit_at_any_weights(dtype: torch.dtype,
                                                                           kernel_calls: list[bool]) -> None:
    base, deltas = _tensors(dtype)
    cases = 0
    # a negative weight, weights summing to zero, a tiny weight; normalize either way; lambda 1 or not
    for w in ([0.6, -0.25, 0.9], [0.5, -0.5, 0.0], [1e-9, 0.0, 0.0]):
        for normalize in (True, False):
            for lambda_ in (1.0, 0.7):
                want, got = torch.empty_like(base), torch.empty_like(base)
                plan = {"normalize": normalize, "lambda_": lambda_}
                merge_into(want, MergePlan.of("task_arithmetic", **plan), base, deltas, w, [1.0] * 3)
                merge_into(got, MergePlan.of("task_arithmetic", fused=True, **plan), base, deltas, w, [1.0] * 3)
                assert same_bits(got, want), (w, normalize, lambda_)
                cases += 1
    assert kernel_calls == [True] * cases
