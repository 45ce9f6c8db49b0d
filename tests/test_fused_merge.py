"""The compiled one-pass ties / dare_ties kernel: the same tensors as the eager merge, bit for bit, or eager."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import make_family
from torch._dynamo.utils import counters

from mmmo.merge.kernels import fused
from mmmo.merge.kernels.fast_merge import merge_into
from mmmo.merge.kernels.tables import Precomputed, dare_tables, sorted_magnitudes
from mmmo.merge.merger import Merger
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.sparsify import dare_generator

# Inductor compiles C++ on CPU; without a compiler the kernel is off (tested below by simulating its failure).
HAS_COMPILER = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler for torch.compile")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TIES, FUSED_TIES = MergePlan.of("ties"), MergePlan.of("ties", fused=True)


def _tensors(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(120, 90, generator=gen).to(dtype)
    deltas = torch.randn(3, 120, 90, generator=gen) * 0.05
    deltas[:, :40] = torch.round(deltas[:, :40] * 64) / 64  # many equal magnitudes: ties at every threshold
    deltas[1, 50:60] = 0  # exact zeros never agree
    deltas[:, 60, :30] = -0.0  # nothing agrees, over a base of +0 and -0: the sign of the zero written must match
    base[60, :10], base[60, 10:20] = 0.0, -0.0
    return base, deltas.to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (torch.equal would take -0 for +0)."""
    ints = {torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(ints), b.view(ints))


# (weights, densities, normalize, lambda): a zero weight, a zero density and a density of 1 drop a model or keep it
# whole; each distinct (normalize, lambda != 1) is one compiled variant, so the list is kept short.
CASES = [
    ([0.6, 0.25, 0.9], [0.3, 0.55, 0.8], None, 1.0),
    ([0.0, 0.5, 1.0], [0.3, 0.0, 1.0], None, 1.0),
    ([0.6, 0.25, 0.9], [0.02, 0.55, 0.97], None, 0.7),
    ([0.6, 0.25, 0.9], [0.3, 1.0, 0.5], "other", 1.0),
]


@needs_compiler
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_fused_kernel_gives_the_eager_merge_bit_for_bit(method: str, kernel_calls: list[bool]) -> None:
    base, deltas = _tensors(torch.float32)
    original = deltas.clone()
    gens = lambda: [dare_generator(3, i, "t") for i in range(3)]  # noqa: E731
    values, positions = sorted_magnitudes(deltas)
    u, u_sorted, prefix = dare_tables(deltas, gens())
    tables = Precomputed(values, positions, u, u_sorted, prefix)
    default_normalize = MergePlan.of(method).normalize
    runs = 0
    for w, d, normalize, lambda_ in CASES:
        norm = (not default_normalize) if normalize == "other" else None
        eager = MergePlan.of(method, normalize=norm, lambda_=lambda_)
        compiled = MergePlan.of(method, normalize=norm, lambda_=lambda_, fused=True)
        # tables: lookups and known tie positions; no tables: selection (ties located by the kernel's caller)
        for pre in (tables, None):
            want, got = torch.empty_like(base), torch.empty_like(base)
            stat_want = merge_into(want, eager, base, deltas, w, d, generators=gens(), tables=pre)
            stat_got = merge_into(got, compiled, base, deltas, w, d, generators=gens(), tables=pre)
            runs += 1
            assert same_bits(got, want), (w, d, normalize, lambda_, pre is None)
            assert torch.equal(deltas, original)  # dropped ties were restored
            # the statistic is summed in another order (float64 in the kernel)
            assert stat_got.item() == pytest.approx(stat_want.item(), rel=1e-6)
    assert kernel_calls == [True] * runs


@needs_compiler
def test_fused_kernel_in_float64_and_with_one_model(kernel_calls: list[bool]) -> None:
    base, deltas = _tensors(torch.float64)
    for rows in (deltas, deltas[1:2]):
        n = rows.shape[0]
        want, got = torch.empty_like(base), torch.empty_like(base)
        merge_into(want, TIES, base, rows, [0.7] * n, [0.4] * n)
        merge_into(got, FUSED_TIES, base, rows, [0.7] * n, [0.4] * n)
        assert same_bits(got, want)
    assert kernel_calls == [True, True]


def test_cases_the_kernel_does_not_take_run_eagerly(kernel_calls: list[bool]) -> None:
    base, deltas = _tensors(torch.float32)
    # a negative weight under normalize needs the general divisor; half types need eager's per-op rounding;
    # linear averages the models themselves (its weights, lambda and zero-sum cases), not base + task vectors: no
    # kernel, with or without normalize
    cases = [
        ("ties", base, deltas, [0.6, -0.25, 0.9], [0.3, 0.5, 0.8], True),
        ("ties", base.bfloat16(), deltas.bfloat16(), [0.6] * 3, [0.3] * 3, True),
        ("linear", base, deltas, [0.6] * 3, [0.3] * 3, False),
        ("linear", base, deltas, [0.6, -0.25, 0.9], [1.0] * 3, True),
        ("dare_linear", base.bfloat16(), deltas.bfloat16(), [0.6] * 3, [0.3] * 3, None),
    ]
    for method, b, d, weights, densities, normalize in cases:
        asked, eager = torch.empty_like(b), torch.empty_like(b)
        merge_into(asked, MergePlan.of(method, fused=True, normalize=normalize), b, d, weights, densities,
                   generators=[dare_generator(7, i, "w") for i in range(3)])  # fmt: skip
        merge_into(eager, MergePlan.of(method, normalize=normalize), b, d, weights, densities,
                   generators=[dare_generator(7, i, "w") for i in range(3)])  # fmt: skip
        assert same_bits(asked, eager), method  # the eager merge itself, not something else that skipped the kernel
        assert not torch.equal(asked, b)  # and it did merge
    assert kernel_calls == []


def test_a_failing_compiler_falls_back_to_eager_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("no C++ compiler found\nlong traceback")

    monkeypatch.setattr(fused.STATE, "failure", None)
    monkeypatch.setattr(fused, "compiled_kernel", lambda: broken)
    base, deltas = _tensors(torch.float32)
    original = deltas.clone()
    values, positions = sorted_magnitudes(deltas)
    tables = Precomputed(sorted_mag=values, sorted_pos=positions)
    want, got = torch.empty_like(base), torch.empty_like(base)
    merge_into(want, TIES, base, deltas, [0.6, 0.25, 0.9], [0.3, 0.55, 0.8], tables=tables)
    # the whole error in one line (errors.one_line), newlines folded into spaces
    said = "fused merge kernel unavailable.*RuntimeError: no C\\+\\+ compiler found long traceback$"
    with pytest.warns(UserWarning, match=said):
        merge_into(got, FUSED_TIES, base, deltas, [0.6, 0.25, 0.9], [0.3, 0.55, 0.8], tables=tables)
    assert torch.equal(got, want)
    assert torch.equal(deltas, original)  # the ties zeroed for the kernel are back
    assert not fused.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per tensor
        merge_into(got, FUSED_TIES, base, deltas, [0.6, 0.25, 0.9], [0.3, 0.55, 0.8])
    assert torch.equal(got, want)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("fused"), 3)


@needs_compiler
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_merger_with_the_fused_kernel_writes_the_same_model(method: str, family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    eager = Merger(base, experts, method=method, layer_groups=2, seed=1)
    compiled = Merger(base, experts, method=method, layer_groups=2, seed=1, fused=True)
    assert not eager.fused and compiled.fused  # tiny models stay eager unless asked
    w = torch.tensor([[0.7, 0.2], [0.0, 0.9], [0.5, 0.5]])
    d = torch.tensor([[0.4, 1.0], [0.6, 0.3], [0.05, 0.8]])
    graphs = counters["stats"]["unique_graphs"]
    s_eager, s_compiled = eager.apply(w, d), compiled.apply(w, d)
    # compiled while loading: tensors of every size and rank reuse that graph
    assert counters["stats"]["unique_graphs"] == graphs
    assert s_compiled == pytest.approx(s_eager, rel=1e-6) and s_eager > 0
    live_eager, live_compiled = eager.live_state_dict(), compiled.live_state_dict()
    for name, t in live_eager.items():
        assert same_bits(live_compiled[name], t), name


def test_merger_keeps_the_eager_path_where_the_kernel_does_not_apply(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    with pytest.warns(UserWarning, match="not multislerp in float32"):
        assert not Merger(base, experts, method="multislerp", fused=True).fused
    with pytest.warns(UserWarning, match="not linear in float32"):  # an average of the models, not a task-vector sum
        assert not Merger(base, experts, method="linear", fused=True).fused
    with pytest.warns(UserWarning, match="not ties in bfloat16"):
        assert not Merger(base, experts, method="ties", dtype=torch.bfloat16, fused=True).fused
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only an explicit request warns
        assert not Merger(base, experts, method="task_arithmetic").fused


_KERNEL_UNDER_ANOTHER_CAPABILITY = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_fused_merge import _tensors, same_bits
from mmmo.merge.kernels.fast_merge import merge_into
from mmmo.merge.methods.plan import MergePlan
base, deltas = _tensors(torch.float32)
want, got = torch.empty_like(base), torch.empty_like(base)
merge_into(want, MergePlan.of("ties"), base, deltas, [0.6, 0.25, 0.9], [0.3, 0.55, 0.8])
merge_into(got, MergePlan.of("ties", fused=True), base, deltas, [0.6, 0.25, 0.9], [0.3, 0.55, 0.8])
print(torch.backends.cpu.get_cpu_capability(), same_bits(got, want))
"""


@needs_compiler
@pytest.mark.slow
def test_a_kernel_cached_under_one_cpu_capability_is_not_reused_under_another(tmp_path: Path) -> None:
    """Inductor's disk cache once handed AVX-512 code to an AVX2 (ATEN_CPU_CAPABILITY) process, which then left
    half of each tensor unwritten; and under `default` its vectorised code did not compile."""
    import subprocess
    import sys

    script = _KERNEL_UNDER_ANOTHER_CAPABILITY.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    seen = []
    for capability in ("", "avx2", "default"):  # this CPU's own first: its code is what gets cached
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert "fused merge kernel unavailable" not in out.stderr, out.stderr
        seen.append(out.stdout.split())
    assert [ok for _, ok in seen] == ["True"] * 3, seen
    assert seen[2][0] == "DEFAULT"
