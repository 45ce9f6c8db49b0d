"""Merge methods on hand-worked tensors: the expected numbers are worked out in the comments."""

from __future__ import annotations

import pytest
import torch

from mmmo.merge.kernels import selection
from mmmo.merge.kernels.fast_merge import merge_into, merge_tensor
from mmmo.merge.kernels.selection import (
    KEEP_NONZERO,
    MagnitudeCut,
    cut_by_selection,
    cut_from_sorted,
    trim_chunk,
)
from mmmo.merge.kernels.tables import Precomputed, dare_tables, masked_l1, rescale_l1, sorted_magnitudes
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.reference import reference_delta, sign_consensus_mask
from mmmo.merge.methods.registry import METHODS
from mmmo.merge.methods.sparsify import (
    bernoulli_mask,
    dare_generator,
    dare_prune,
    l1_rescaled,
    magnitude_keep_count,
    magnitude_mask,
    magnitude_prune,
)
from mmmo.runtime.errors import MmmoError


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-6, atol=1e-7)


# Two task vectors of 4 entries, used by the TIES examples.
TAU = torch.tensor([[0.5, -0.2, 0.1, -0.4], [-0.3, -0.6, 0.2, 0.05]])
ONES = torch.ones(4)


def test_magnitude_prune_keeps_the_k_largest() -> None:
    # density 0.5 of 4 entries: k = 2. |tau1| = .5 .2 .1 .4 -> keep .5 and -.4
    close(magnitude_prune(TAU[0], 0.5), [0.5, 0.0, 0.0, -0.4])
    # |tau2| = .3 .6 .2 .05 -> keep -.3 and -.6
    close(magnitude_prune(TAU[1], 0.5), [-0.3, -0.6, 0.0, 0.0])


def test_magnitude_prune_edges() -> None:
    # k = max(1, int(0.01 * 4)) = 1: the single largest survives (mergekit keeps at least one)
    close(magnitude_prune(TAU[0], 0.01), [0.5, 0.0, 0.0, 0.0])
    close(magnitude_prune(TAU[0], 0.0), [0.0, 0.0, 0.0, 0.0])
    close(magnitude_prune(TAU[0], 1.0), TAU[0].tolist())
    # three entries tie at |1| for k = 2: exactly two survive, lowest index first
    close(magnitude_prune(torch.tensor([1.0, -1.0, 1.0, 0.5]), 0.5), [1.0, -1.0, 0.0, 0.0])


def test_keep_count_matches_mergekit_for_float32_densities() -> None:
    assert magnitude_keep_count(10, 0.7) == 7
    assert magnitude_keep_count(10, float(torch.tensor(0.7, dtype=torch.float32))) == 7  # 0.69999999
    assert magnitude_keep_count(10, 0.35) == 3
    assert magnitude_keep_count(0, 0.5) == 0
    assert magnitude_keep_count(1000, 1e-9) == 1


def test_ties_by_hand() -> None:
    # Trimmed (density .5): t1 = [.5, 0, 0, -.4], t2 = [-.3, -.6, 0, 0]; weights [1, .5]:
    # weighted w1*t1 = [.5, 0, 0, -.4], w2*t2 = [-.15, -.3, 0, 0]; sum = [.35, -.3, 0, -.4]
    # elected signs: + - + -   (0 counts as +)
    # agreeing: e0 model 1 (.5, weight 1); e1 model 2 (-.3, weight .5); e2 none; e3 model 1 (-.4, weight 1)
    # normalized: [.5/1, -.3/.5, 0 (divisor 0 -> 1), -.4/1] = [.5, -.6, 0, -.4]
    out = merge_tensor("ties", ONES, TAU, [1.0, 0.5], [0.5, 0.5])
    close(out, [1.5, 0.4, 1.0, 0.6])
    # without normalization: the agreeing sum [.5, -.3, 0, -.4]; lambda 2 doubles it
    close(merge_tensor("ties", ONES, TAU, [1.0, 0.5], [0.5, 0.5], normalize=False), [1.5, 0.7, 1.0, 0.6])
    close(merge_tensor("ties", ONES, TAU, [1.0, 0.5], [0.5, 0.5], lambda_=2.0), [2.0, -0.2, 1.0, 0.2])
    # the default normalize of ties is on
    close(merge_tensor("ties", ONES, TAU, [1.0, 0.5], [0.5, 0.5]), [1.5, 0.4, 1.0, 0.6])


def test_sign_consensus_by_hand() -> None:
    # sum = [.2, -.8, .3, -.35] -> + - + -; a zero never agrees
    weighted = torch.tensor([[0.5, -0.2, 0.1, -0.4], [-0.3, -0.6, 0.2, 0.05], [0.0, 0.0, 0.0, 0.0]])
    agree = sign_consensus_mask(weighted)
    assert agree.tolist() == [[True, True, True, True], [False, True, True, False], [False, False, False, False]]


def test_dare_ties_without_dropping_by_hand() -> None:
    # density 1 keeps everything: w*tau = [.5, -.2, .1, -.4] and [-.15, -.3, .1, .025]
    # sum = [.35, -.5, .2, -.375] -> + - + -; agreeing sums [.5, -.5, .2, -.4]; no normalization by default
    out = merge_tensor("dare_ties", torch.zeros(4), TAU, [1.0, 0.5], [1.0, 1.0])
    close(out, [0.5, -0.5, 0.2, -0.4])


def test_l1_rescale_by_hand() -> None:
    # |[1,-2,3,-4]|_1 = 10; kept [1,0,3,0] has norm 4 -> scale 2.5
    delta = torch.tensor([1.0, -2.0, 3.0, -4.0])
    close(l1_rescaled(delta, torch.tensor([True, False, True, False])), [2.5, 0.0, 7.5, 0.0])
    # nothing kept: no rescale (mergekit's eps guard), the result is zero
    close(l1_rescaled(delta, torch.zeros(4, dtype=torch.bool)), [0.0, 0.0, 0.0, 0.0])


def test_dare_prune_uses_the_generator_mask_and_rescales() -> None:
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    out = dare_prune(delta, 0.3, dare_generator(7, 0, "w"))
    keep = bernoulli_mask(delta.shape, 0.3, dare_generator(7, 0, "w"))
    assert torch.equal(out != 0, keep)
    torch.testing.assert_close(out.abs().sum(), delta.abs().sum())  # L1 norm preserved
    assert 0.25 < keep.float().mean().item() < 0.35
    no_rescale = dare_prune(delta, 0.3, dare_generator(7, 0, "w"), rescale=False)
    assert torch.equal(no_rescale, delta * keep)
    assert torch.equal(dare_prune(delta, 1.0), delta)
    assert torch.equal(dare_prune(delta, 0.0), torch.zeros_like(delta))


def test_dare_masks_nest_and_depend_on_seed_model_and_name() -> None:
    shape = (64, 64)
    low = bernoulli_mask(shape, 0.3, dare_generator(1, 0, "a"))
    high = bernoulli_mask(shape, 0.6, dare_generator(1, 0, "a"))
    assert bool((low & ~high).sum() == 0)  # same draws: a higher density keeps a superset
    assert torch.equal(low, bernoulli_mask(shape, 0.3, dare_generator(1, 0, "a")))
    for other in (dare_generator(2, 0, "a"), dare_generator(1, 1, "a"), dare_generator(1, 0, "b")):
        assert not torch.equal(low, bernoulli_mask(shape, 0.3, other))


def test_dare_linear_by_hand_with_density_one() -> None:
    # no drop: base + sum w_i tau_i = 0 + [.5-.15, -.2-.3, .1+.1, -.4+.025]
    close(merge_tensor("dare_linear", torch.zeros(4), TAU, [1.0, 0.5], [1.0, 1.0]), [0.35, -0.5, 0.2, -0.375])


def test_task_arithmetic_by_hand() -> None:
    base = torch.tensor([1.0, 2.0])
    deltas = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # lambda 2: base + 2 * (.5*[1,0] + .25*[0,2]) = [1,2] + [1,1]
    close(merge_tensor("task_arithmetic", base, deltas, [0.5, 0.25], lambda_=2.0), [2.0, 3.0])
    # normalized: divide the sum [.5,.5] by .75 first, then lambda 2: [1+4/3, 2+4/3]
    close(merge_tensor("task_arithmetic", base, deltas, [0.5, 0.25], lambda_=2.0, normalize=True), [7 / 3, 10 / 3])
    # all-zero weights: the base (the normalizer guard makes 0/0 into 0/1)
    close(merge_tensor("task_arithmetic", base, deltas, [0.0, 0.0], normalize=True), [1.0, 2.0])


def test_linear_by_hand() -> None:
    base = torch.tensor([1.0, 2.0])
    deltas = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # models [2,2] and [1,4]
    # (1*[2,2] + 3*[1,4]) / 4 = [1.25, 3.5]
    close(merge_tensor("linear", base, deltas, [1.0, 3.0]), [1.25, 3.5])
    # unnormalized: the weighted sum [5, 14]
    close(merge_tensor("linear", base, deltas, [1.0, 3.0], normalize=False), [5.0, 14.0])
    # weights summing to 0 have no average: defined as the base
    close(merge_tensor("linear", base, deltas, [0.0, 0.0]), [1.0, 2.0])


def test_all_zero_weights_give_the_base_for_every_method() -> None:
    base = torch.randn(3, 5)
    deltas = torch.randn(2, 3, 5)
    # interpolations have no such rule, and SCE takes no weights (its own: the models' mean squares)
    for method in (name for name, m in METHODS.items() if not m.geometric and m.uses_weight):
        out = merge_tensor(method, base, deltas, [0.0, 0.0], [0.5, 0.5], generators=[None, None])
        assert torch.equal(out, base), method


def test_merge_tensor_dtype_and_shape_checks() -> None:
    base = torch.zeros(4, dtype=torch.bfloat16)
    out = merge_tensor("ties", base, TAU.to(torch.bfloat16), [1.0, 0.5], [0.5, 0.5])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.tensor([0.5, -0.6, 0.0, -0.4]), atol=5e-3, rtol=0)
    with pytest.raises(ValueError, match="weights"):
        merge_tensor("ties", ONES, TAU, [1.0], [0.5, 0.5])
    with pytest.raises(MmmoError, match="unsupported merge method 'nearswap'"):
        merge_tensor("nearswap", ONES, TAU, [1.0, 1.0])


def test_a_merge_plan_resolves_the_mergekit_defaults_and_refuses_nonsense() -> None:
    plan = MergePlan.of("dare_ties")
    assert (plan.method.name, plan.normalize, plan.rescale, plan.lambda_, plan.fused) == (
        "dare_ties", False, True, 1.0, False)
    assert MergePlan.of("ties", normalize=False).normalize is False
    with pytest.raises(MmmoError, match="unsupported merge method 'nearswap'"):
        MergePlan.of("nearswap")
    with pytest.raises(MmmoError, match="lambda must be a finite number"):
        MergePlan.of("ties", lambda_=float("nan"))
    with pytest.raises(AttributeError):
        plan.normalize = True  # type: ignore[misc]


def test_method_defaults_follow_mergekit() -> None:
    assert {n: (m.default_normalize, m.default_rescale) for n, m in METHODS.items()} == {
        "linear": (True, False),
        "task_arithmetic": (False, False),
        "ties": (True, False),
        "dare_ties": (False, True),
        "dare_linear": (False, True),
        **{m: (False, False) for m in ("slerp", "nuslerp", "multislerp", "model_stock", "karcher")},
        "breadcrumbs": (False, False),
        "breadcrumbs_ties": (False, False),
        "della": (True, True),
        "della_linear": (False, True),
        "sce": (False, False),
    }


# ---- the optimized path against a direct transcription of mergekit's algorithm


def reference(method: str, base: torch.Tensor, deltas: torch.Tensor, weights: list[float],
              densities: list[float], seed: int = 0, normalize: bool | None = None) -> torch.Tensor:
    """mergekit's generalized task arithmetic, step by step (`mmmo.merge.methods.reference`), with DARE draws seeded as
    the Merger seeds them."""
    gens = [dare_generator(seed, i, "t") for i in range(deltas.shape[0])]
    return reference_delta(MergePlan.of(method, normalize=normalize), base, deltas, weights, densities, gens)


def trimmed(delta: torch.Tensor, density: float, row: torch.Tensor, ws: Workspace) -> None:
    """row = delta trimmed by the fast path's selection (0 < k < numel)."""
    k = magnitude_keep_count(delta.numel(), density)
    trim_chunk(delta, cut_by_selection(delta, k, ws), row, ws)


def _large(dtype: torch.dtype, quantize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    deltas = torch.randn(3, 400, 800, generator=gen)  # 320k entries: the sampled-bracket selection
    deltas[1, :50] = 0  # untouched rows, as fine-tuning often leaves
    if quantize:
        deltas = torch.round(deltas * 64) / 64  # many equal magnitudes at every threshold
    return torch.zeros(400, 800, dtype=dtype), deltas.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantize", [False, True])
def test_magnitude_selection_is_exact_on_large_tensors(dtype: torch.dtype, quantize: bool) -> None:
    _, deltas = _large(dtype, quantize)
    ws = Workspace()
    row = torch.empty(deltas[0].numel(), dtype=dtype)
    for density in (0.013, 0.3, 0.5, 0.92):
        for i in range(3):
            trimmed(deltas[i].reshape(-1), density, row, ws)
            want = magnitude_mask(deltas[i], density).reshape(-1)
            k = magnitude_keep_count(deltas[i].numel(), density)
            kept = (row != 0) | (want & (deltas[i].reshape(-1) == 0))  # a kept zero reads as zero
            assert torch.equal(kept, want), (density, i)
            assert int(want.sum()) == k


def test_bracket_fallback_when_the_sample_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    _, deltas = _large(torch.float32, False)
    # a "sample" of one position: the bracket cannot hold the threshold, the full selection must take over
    monkeypatch.setattr(selection, "bracket_sample", lambda numel, device: torch.zeros(4096, dtype=torch.long))
    row = torch.empty(deltas[0].numel())
    trimmed(deltas[0].reshape(-1), 0.4, row, Workspace())
    assert torch.equal(row != 0, magnitude_mask(deltas[0], 0.4).reshape(-1))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "task_arithmetic", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_merge_matches_the_reference(method: str, dtype: torch.dtype) -> None:
    base, deltas = _large(dtype, quantize=method == "ties")
    w, d = [0.6, 0.25, 0.9], [0.3, 0.55, 0.8]
    ws = Workspace()
    for normalize in (None, True, False):
        gens = [dare_generator(0, i, "t") for i in range(3)]
        got = torch.empty_like(base)
        merge_into(got, MergePlan.of(method, normalize=normalize), base, deltas, w, d, generators=gens, workspace=ws,
                   add_base=False)
        want = reference(method, base, deltas, w, d, normalize=normalize)
        # rounding differs only in the order of a few operations: compare relative to the tensor's norm
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        assert err <= 1e-6, (method, normalize, err)


# ---- search-wide tables and chunking: the same results as the direct path


def test_cut_from_sorted_by_hand() -> None:
    # |x| = 1 1 1 .5 1 0: k = 2 keeps two of the four 1s, lowest positions first (0 and 1), dropping 2 and 4
    x = torch.tensor([[1.0, -1.0, 1.0, 0.5, -1.0, 0.0]])
    values, positions = sorted_magnitudes(x)
    assert values[0].tolist() == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert positions[0].tolist() == [5, 3, 0, 1, 2, 4]  # equal magnitudes in ascending position
    cut = cut_from_sorted(values[0], 2, positions[0])
    assert (cut.t, cut.room, cut.drop.tolist()) == (1.0, 2, [2, 4])
    assert cut.below < 1.0 and torch.tensor(cut.below) == torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))
    # k = 5: the threshold .5 is unique, nothing to drop; k = 6 reaches the zero: keep every nonzero
    assert cut_from_sorted(values[0], 5, positions[0]) == MagnitudeCut(0.5, cut_below(0.5), None)
    assert cut_from_sorted(values[0], 6 - 1, None).room is None
    assert cut_from_sorted(torch.tensor([0.0, 0.0, 2.0]), 2) == KEEP_NONZERO


def cut_below(t: float) -> float:
    return torch.nextafter(torch.tensor(t), torch.tensor(0.0)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sorted_cut_keeps_exactly_the_selection(dtype: torch.dtype) -> None:
    _, deltas = _large(dtype, quantize=True)  # many equal magnitudes at every threshold
    values, positions = sorted_magnitudes(deltas)
    for density in (0.013, 0.3, 0.5, 0.92):
        for i in range(3):
            flat = deltas[i].reshape(-1)
            k = magnitude_keep_count(flat.numel(), density)
            kept = torch.empty_like(flat)
            trim_chunk(flat, cut_from_sorted(values[i], k, positions[i]), kept, Workspace())
            cut = cut_from_sorted(values[i], k, positions[i])
            if cut.drop is not None:
                kept[cut.drop] = 0
            want = magnitude_mask(deltas[i], density).reshape(-1)
            assert torch.equal((kept != 0) | (want & (flat == 0)), want), (density, i)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "task_arithmetic", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("w", [[0.6, 0.25, 0.9], [0.6, -0.25, 0.9]])  # a negative weight: the general divisor
def test_chunks_and_tables_give_the_same_merge(method: str, dtype: torch.dtype, w: list[float]) -> None:
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(300, 70, generator=gen).to(dtype)
    deltas = (torch.round(torch.randn(3, 300, 70, generator=gen) * 32) / 32).to(dtype)  # ties at thresholds
    d = [0.3, 0.55, 0.8]
    values, positions = sorted_magnitudes(deltas)
    gens = [dare_generator(4, i, "t") for i in range(3)]
    u, u_sorted, prefix = dare_tables(deltas, gens)
    tables = Precomputed(values, positions, u, u_sorted, prefix)
    results = []
    for chunk in (base.numel(), 4096, 999):  # whole, aligned and ragged chunks
        for pre in (None, tables):
            out = torch.empty_like(base)
            gens = [dare_generator(4, i, "t") for i in range(3)]
            plan = MergePlan.of(method, chunk=chunk)
            stat = merge_into(out, plan, base, deltas, w, d, generators=gens, tables=pre)
            results.append((out, stat))
    first, stat0 = results[0]
    for out, stat in results[1:]:
        assert torch.equal(out, first)
        assert stat.item() == pytest.approx(stat0.item(), rel=1e-6)
    # and the merge is base + mixed (what merge_into writes without the base), whose |.|_1 is the returned statistic
    mixed = torch.empty_like(base)
    gens = [dare_generator(4, i, "t") for i in range(3)]
    merge_into(mixed, MergePlan.of(method), base, deltas, w, d, generators=gens, add_base=False)
    assert torch.equal(first, (base + mixed).to(dtype))
    assert stat0.item() == pytest.approx(mixed.double().abs().sum().item(), rel=1e-5)


def test_dare_tables_hold_the_generator_draws_and_masked_norms() -> None:
    gen = torch.Generator().manual_seed(6)
    deltas = torch.randn(2, 5000, generator=gen)
    u, u_sorted, prefix = dare_tables(deltas, [dare_generator(1, i, "w") for i in range(2)])
    for i in range(2):
        fresh = torch.empty(5000).uniform_(generator=dare_generator(1, i, "w"))
        assert torch.equal(u[i], fresh)  # the exact draws bernoulli_mask makes
        assert torch.equal(u_sorted[i], torch.sort(fresh).values)
        assert prefix[i, -1] == rescale_l1(deltas[i])
        # densities at, just above and between draws: the mask compares in float32, as torch.lt does
        probes = [0.0, 0.37, float(u_sorted[i, 1234]), float(u_sorted[i, 1234]) + 1e-12, 1.0]
        for density in probes:
            keep = bernoulli_mask((5000,), density, dare_generator(1, i, "w"))
            want = float(rescale_l1(deltas[i] * keep)) if keep.any() else 0.0
            assert masked_l1(u_sorted[i], prefix[i], density) == pytest.approx(want, rel=1e-6, abs=0), density
