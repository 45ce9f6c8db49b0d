"""The bfloat16 path a GPU takes by default, run on the CPU on every commit: test_cuda.py's cases in bf16.

Merges against the float64 merge of the same sources, search-wide tables against generators and streaming, the
fused kernel's request (eager in bf16), and demo candidates scored end to end with lm-eval in bf16 against
float32; tolerances and cases from device_cases.py.

Not here, and why: float32 on a GPU against the CPU (no second device), the fused kernel itself (it compiles for
float32/64 only: in bf16 it would skip eager's per-op roundings, so a request runs eagerly), the multiply-add
contraction setting (Triton's), and pinned host memory for streaming (pinning is for copies to CUDA).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from device_cases import (
    BF16,
    BF16_FLIPS,
    FUSED_CASES,
    SPARSITY_RTOL,
    D,
    W,
    assert_scores_agree,
    random_case,
    same_bits,
    score_demo_merges,
)
from tiny_models import make_family

from mmmo.merge.kernels.fast_merge import merge_into
from mmmo.merge.kernels.tables import Precomputed, dare_tables, sorted_magnitudes
from mmmo.merge.merger import Merger
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.sparsify import dare_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
BF = torch.bfloat16


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("bf16"), 3)


def _pair(method: str, family: tuple[Path, list[Path]], densities: torch.Tensor) -> tuple[Merger, Merger]:
    """The same merge in bfloat16 and in float64 (the reference), both applied."""
    base, experts = family
    merges = tuple(Merger(base, experts, method=method, layer_groups=2, dtype=dtype, device="cpu")
                   for dtype in (BF, torch.float64))
    stats = [m.apply(W, densities) for m in merges]
    assert stats[0] == pytest.approx(stats[1], rel=SPARSITY_RTOL) and stats[1] > 0
    return merges  # type: ignore[return-value]


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "dare_linear_at_full_density"])
def test_bf16_merge_matches_the_float64_merge(method: str, family: tuple[Path, list[Path]]) -> None:
    densities = D
    if method == "dare_linear_at_full_density":  # density 1 drops nothing: DARE's rescale path without draws
        method, densities = "dare_linear", torch.ones_like(D)
    in_bf16, reference = _pair(method, family, densities)
    got, want = in_bf16.live_state_dict(), reference.live_state_dict()
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == BF
        torch.testing.assert_close(got[name].double(), t, **BF16, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_bf16_consensus_merge_matches_the_float64_merge_but_for_flips(
    method: str, family: tuple[Path, list[Path]]
) -> None:
    """Sign election and the TIES threshold decide on bf16 task vectors: an entry that goes the other way (at most
    BF16_FLIPS of a tensor) moves by at most twice what the models' task vectors, rescaled, could add."""
    in_bf16, reference = _pair(method, family, D)
    got, want = in_bf16.live_state_dict(), reference.live_state_dict()
    flips = total = 0
    for name, t in want.items():
        g = in_bf16.group_of(name)
        assert got[name].dtype == BF and torch.isfinite(got[name]).all()
        err = (got[name].double() - t).abs()
        close = err <= BF16["atol"] + BF16["rtol"] * t.abs()
        assert (~close).double().mean() <= BF16_FLIPS, name
        _, deltas = reference.task_vectors.fetch(name)
        reach = sum(deltas[i].abs() / D[i, g] for i in range(deltas.shape[0]))
        assert bool((err <= 2 * reach + BF16["atol"]).all()), name
        flips, total = flips + int((~close).sum()), total + t.numel()
    assert flips < 0.01 * total  # 0.4% measured


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_tables_generators_and_streaming_agree_in_bf16(method: str, family: tuple[Path, list[Path]]) -> None:
    """Resident with search-wide tables, resident without them (a generator per tensor), and streamed from host
    memory: the same bf16 tensors bit for bit."""
    base, experts = family
    kw = {"method": method, "layer_groups": 2, "seed": 3, "dtype": BF, "device": "cpu"}
    tables, plain, streamed = Merger(base, experts, **kw), Merger(base, experts, precompute=False, **kw), \
        Merger(base, experts, max_resident_bytes=0, **kw)
    assert tables.precomputed and not plain.precomputed and not streamed.resident
    assert streamed.task_vectors.stored(streamed.names[0])[1].dtype == BF
    stats = [m.apply(W, D) for m in (tables, plain, streamed)]
    assert stats[1] == stats[0] and stats[2] == stats[0] and stats[0] > 0
    live = [m.live_state_dict() for m in (tables, plain, streamed)]
    for name, t in live[0].items():
        assert same_bits(live[1][name], t) and same_bits(live[2][name], t), name


def test_bfloat16_merge_on_cpu_stays_bfloat16(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    merger = Merger(base, experts, method="dare_ties", dtype=BF, device="cpu")
    before = merger.live_state_dict()
    merger.apply(W[:, 0], D[:, 0])
    assert {p.dtype for p in merger.model.parameters()} == {BF}
    assert all(p.device == CPU for p in merger.model.parameters())
    after = merger.live_state_dict()
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(after[n], before[n]) for n in before)  # it did merge


# ------------------------------------------------------------------------------ the fused kernel's request


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_fused_request_in_bf16_runs_the_eager_merge(method: str, kernel_calls: list[bool]) -> None:
    """FUSED_CASES in bf16, with and without tables: a plan asking for the kernel writes eager's tensors bit for
    bit, and the kernel is never called (it would skip eager's per-op bf16 roundings)."""
    base, deltas = random_case(CPU, BF)
    gens = lambda: [dare_generator(3, i, "t", CPU) for i in range(3)]  # noqa: E731
    values, positions = sorted_magnitudes(deltas)
    u, u_sorted, prefix = dare_tables(deltas, gens())
    tables = Precomputed(values, positions, u, u_sorted, prefix)
    default_normalize = MergePlan.of(method).normalize
    for w, d, normalize, lambda_ in FUSED_CASES:
        norm = (not default_normalize) if normalize == "other" else None
        eager = MergePlan.of(method, normalize=norm, lambda_=lambda_)
        asked = MergePlan.of(method, normalize=norm, lambda_=lambda_, fused=True)
        for pre in (tables, None):
            want, got = torch.empty_like(base), torch.empty_like(base)
            s_want = merge_into(want, eager, base, deltas, w, d, generators=gens(), tables=pre)
            s_got = merge_into(got, asked, base, deltas, w, d, generators=gens(), tables=pre)
            assert same_bits(got, want) and s_got.item() == s_want.item() > 0, (w, d, normalize, lambda_)
            assert not torch.equal(got, base)
    assert kernel_calls == []


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_merger_asked_for_the_fused_kernel_in_bf16(method: str, family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    eager = Merger(base, experts, method=method, layer_groups=2, seed=1, dtype=BF)
    with pytest.warns(UserWarning, match=f"not {method} in bfloat16"):
        asked = Merger(base, experts, method=method, layer_groups=2, seed=1, dtype=BF, fused=True)
    assert not eager.fused and not asked.fused
    assert asked.apply(W, D) == eager.apply(W, D) > 0
    want, got = eager.live_state_dict(), asked.live_state_dict()
    for name, t in want.items():
        assert same_bits(got[name], t), name


# ---------------------------------------------------------------------------------------- bf16 scores on cpu


def test_bf16_scores_on_cpu_match_float32(demo_paths, tmp_path: Path) -> None:
    """Demo candidates merged and scored end to end (CandidateEvaluator: merge, lm-eval, sparsity) in bfloat16
    against the same ones in float32, within test_cuda.py's bounds for a GPU's bf16."""
    in_float32 = score_demo_merges(demo_paths, tmp_path / "float32", "cpu", "float32")
    assert_scores_agree(in_float32, score_demo_merges(demo_paths, tmp_path / "bfloat16", "cpu", "bfloat16"))
