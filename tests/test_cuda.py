"""On a CUDA device: merges equal the CPU's, bf16 scoring agrees with float32 on CPU, the fused kernel with eager.

Every test is marked `cuda` and skipped where torch sees no CUDA device; `scripts/gpu_check.sh` runs them on a GPU
box (`pytest -m cuda`). None of them has run on a GPU yet: the tolerances are reasoned, not measured there.

Why not bit for bit everywhere, and the tolerances: see device_cases.py (shared with test_bf16_cpu.py, which runs
the bfloat16 cases on the CPU on every commit).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from device_cases import (
    F32,
    FUSED_CASES,
    D,
    W,
    assert_scores_agree,
    random_case,
    same_bits,
    score_demo_merges,
)
from tiny_models import make_family

from mmmo.merge.kernels import fused
from mmmo.merge.kernels.fast_merge import merge_into
from mmmo.merge.kernels.tables import Precomputed, dare_tables, sorted_magnitudes
from mmmo.merge.merger import Merger
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.sparsify import dare_generator

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("one_torch_thread"),
]

def cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("cuda"), 3)


# ------------------------------------------------------------------------------------------------ the Merger


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_linear_at_full_density"])
def test_float32_merge_on_cuda_matches_the_cpu(method: str, family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    densities = D
    if method == "dare_linear_at_full_density":  # density 1 drops nothing: DARE without its (device-bound) draws
        method, densities = "dare_linear", torch.ones_like(D)
    on_cpu = Merger(base, experts, method=method, layer_groups=2, device="cpu")
    on_gpu = Merger(base, experts, method=method, layer_groups=2, device=cuda())
    assert on_gpu.resident and next(on_gpu.model.parameters()).device == cuda()
    s_cpu, s_gpu = on_cpu.apply(W, densities), on_gpu.apply(W, densities)
    assert s_gpu == pytest.approx(s_cpu, rel=1e-6) and s_cpu > 0
    want, got = on_cpu.live_state_dict(), on_gpu.live_state_dict()
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, **F32, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_tables_generators_and_streaming_agree_on_cuda(method: str, family: tuple[Path, list[Path]]) -> None:
    """Resident with search-wide tables (CUDA sorts, DARE draws in one pass), resident without them (the CUDA
    generator per tensor), and streamed from pinned host memory (non_blocking copies): the same tensors."""
    base, experts = family
    tables = Merger(base, experts, method=method, layer_groups=2, seed=3, device=cuda())
    plain = Merger(base, experts, method=method, layer_groups=2, seed=3, device=cuda(), precompute=False)
    streamed = Merger(base, experts, method=method, layer_groups=2, seed=3, device=cuda(), max_resident_bytes=0)
    assert tables.precomputed and not plain.precomputed and not streamed.resident
    assert streamed.task_vectors.stored(streamed.names[0])[1].is_pinned()
    stats = [m.apply(W, D) for m in (tables, plain, streamed)]
    assert stats[1] == pytest.approx(stats[0], rel=1e-12) and stats[2] == pytest.approx(stats[0], rel=1e-12)
    live = [m.live_state_dict() for m in (tables, plain, streamed)]
    for name, t in live[0].items():
        assert torch.equal(live[1][name], t) and torch.equal(live[2][name], t), name


def test_bfloat16_merge_on_cuda_stays_bfloat16(family: tuple[Path, list[Path]]) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    base, experts = family
    merger = Merger(base, experts, method="dare_ties", dtype=torch.bfloat16, device=cuda())
    merger.apply(W[:, 0], D[:, 0])
    assert {p.dtype for p in merger.model.parameters()} == {torch.bfloat16}
    assert all(p.device == cuda() for p in merger.model.parameters())
    assert all(torch.isfinite(t).all() for t in merger.live_state_dict().values())


# -------------------------------------------------------------------------------------- bf16 scores on cuda


def test_bf16_scores_on_cuda_match_cpu_float32(demo_paths, tmp_path: Path) -> None:
    """The demo's three tasks (50 examples each) on ties merges of its experts: the same merges in float32 on the
    CPU and in bfloat16 on CUDA (ties: no random draws, so only the dtype and the device differ)."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    on_cpu = score_demo_merges(demo_paths, tmp_path / "cpu", "cpu", "float32")
    assert_scores_agree(on_cpu, score_demo_merges(demo_paths, tmp_path / "cuda", "cuda", "bfloat16"))


# ------------------------------------------------------------------------------------ the fused kernel (Triton)


def _fused_against_eager(method: str) -> tuple[int, int, float]:
    """Every case, with and without tables: asserts the stated tolerance; returns (bit-exact tensors, tensors,
    largest difference in ulp of the eager value)."""
    base, deltas = random_case(cuda())
    gens = lambda: [dare_generator(3, i, "t", cuda()) for i in range(3)]  # noqa: E731
    values, positions = sorted_magnitudes(deltas)
    u, u_sorted, prefix = dare_tables(deltas, gens())
    tables = Precomputed(values, positions, u, u_sorted, prefix)
    default_normalize = MergePlan.of(method).normalize
    exact = total = 0
    worst = 0.0
    for w, d, normalize, lambda_ in FUSED_CASES:
        norm = (not default_normalize) if normalize == "other" else None
        eager = MergePlan.of(method, normalize=norm, lambda_=lambda_)
        compiled = MergePlan.of(method, normalize=norm, lambda_=lambda_, fused=True)
        for pre in (tables, None):
            want, got = torch.empty_like(base), torch.empty_like(base)
            s_want = merge_into(want, eager, base, deltas, w, d, generators=gens(), tables=pre)
            s_got = merge_into(got, compiled, base, deltas, w, d, generators=gens(), tables=pre)
            torch.testing.assert_close(got, want, **F32, msg=lambda m, c=(w, d, normalize, lambda_): f"{c}: {m}")
            assert s_got.item() == pytest.approx(s_want.item(), rel=1e-6)
            total += 1
            exact += same_bits(got, want)
            ulp = torch.finfo(torch.float32).eps * want.abs().clamp_min(torch.finfo(torch.float32).tiny)
            worst = max(worst, float(((got - want).abs() / ulp).max()))
    return exact, total, worst


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_fused_kernel_on_cuda_matches_eager(method: str, kernel_calls: list[bool]) -> None:
    """As mmmo compiles it (inductor's defaults): within F32 of eager; how many tensors are bit for bit is
    reported as a warning, since Triton's multiply-add contraction may move last bits."""
    exact, total, worst = _fused_against_eager(method)
    assert kernel_calls and all(kernel_calls), f"the fused kernel did not run on CUDA: {fused.STATE.failure}"
    if exact < total:
        warnings.warn(f"fused {method} on CUDA: {exact}/{total} tensors bit for bit with eager, the rest within "
                      f"{worst:.1f} ulp", stacklevel=1)


@pytest.mark.xfail(strict=False, reason="unverified: Triton may still round division or denormals differently")
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_fused_kernel_on_cuda_is_bit_for_bit_without_contraction(
    method: str, kernel_calls: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With multiply-add contraction off (`emulate_precision_casts`), the kernel should make eager's roundings: if
    this passes on a GPU, fused.py can compile with that setting on CUDA and claim bit for bit there too."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # compiled graphs are cached per function: drop those made with the default setting
    compiled = torch.compile(fused.consensus_kernel, dynamic=True, fullgraph=True)
    monkeypatch.setattr(fused, "compiled_kernel", lambda: compiled)
    try:
        with inductor_config.patch(emulate_precision_casts=True):
            exact, total, worst = _fused_against_eager(method)
    finally:
        torch._dynamo.reset()  # and drop these, so later tests compile with the default again
    assert kernel_calls and all(kernel_calls), f"the fused kernel did not run on CUDA: {fused.STATE.failure}"
    assert exact == total, f"{exact}/{total} tensors bit for bit, the rest within {worst:.1f} ulp"


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_merger_with_the_fused_kernel_on_cuda(method: str, family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    eager = Merger(base, experts, method=method, layer_groups=2, seed=1, device=cuda())
    compiled = Merger(base, experts, method=method, layer_groups=2, seed=1, device=cuda(), fused=True)
    assert not eager.fused, "the fused kernel is opt-in on CUDA"
    assert compiled.fused, f"the fused kernel did not compile on CUDA: {fused.STATE.failure}"
    s_eager, s_compiled = eager.apply(W, D), compiled.apply(W, D)
    assert s_compiled == pytest.approx(s_eager, rel=1e-6) and s_eager > 0
    want, got = eager.live_state_dict(), compiled.live_state_dict()
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, **F32, msg=lambda m, name=name: f"{name}: {m}")
