"""The merges, scores and tolerances that test_cuda.py (on a GPU) and test_bf16_cpu.py (bfloat16 on the CPU) share.

Why not bit for bit everywhere:
- CUDA's elementwise kernels are compiled with multiply-add contraction (an FMA rounds once where the CPU's
  separate multiply and add round twice), so float32 merges on CUDA may differ from the CPU's in the last bits.
- DARE's draws come from a CUDA generator, which gives other numbers than the CPU's for the same seed: DARE
  merges are compared within CUDA only (tables against the generator path), never against the CPU.
- Triton (the fused kernel on CUDA) contracts multiply-adds too, unless inductor's `emulate_precision_casts` is on.
- bf16 rounds every weight to 8 bits of mantissa; a greedy answer flips where two tokens were nearly tied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

# float32 on CUDA against float32 on CPU: rtol is 8 ulp; atol covers entries near zero, whose error is that of
# the (much larger) operands they were computed from.
F32 = {"rtol": 1e-6, "atol": 1e-7}
# A bfloat16 merge against the float64 merge of the same sources: the task vectors are rounded to bf16 once (half
# an ulp), the merge's few elementwise ops round again and the result rounds once more; measured on CPU: at most
# 1.1 ulp (ulp = 2^-7 of the value) on linear and task_arithmetic. rtol is 2 ulp (torch's own bf16 default);
# atol covers entries near zero.
BF16 = {"rtol": 1.6e-2, "atol": 1e-5}
# ... except where a sign election (ties, dare_ties) or a TIES threshold decides on rounded task vectors: an entry
# whose weighted sum is within rounding of 0, or whose magnitude is within rounding of the threshold, may go the
# other way. Measured on CPU: at most 2 of 256 entries of a tensor, 0.4% of all; such an entry moves by at most
# what the models' weighted task vectors can move it.
BF16_FLIPS = 0.02  # of a tensor's entries, at most
# Exact match on the demo tasks (50 examples each), CUDA bf16 against CPU float32. On CPU, bf16 against float32
# moved a task by at most 0.02 (one example) over 4 ties merges and the 4 source models; CUDA's other matmul
# accumulation order can flip a few more, so the bound is 5 examples per task and 0.05 on the mean of the three.
TASK_TOL, MEAN_TOL = 0.10, 0.05
# mean |merged - base|: bf16 task vectors are rounded to 8 mantissa bits (0.4% per entry at most)
SPARSITY_RTOL = 1e-2
W = torch.tensor([[0.7, 0.2], [0.4, 0.5], [0.9, 0.1]], dtype=torch.float64)
D = torch.tensor([[0.5, 0.9], [0.3, 0.2], [0.8, 0.6]], dtype=torch.float64)
DEMO_TASKS = ("arith", "reverse", "sort")
# (weights, densities) of the demo's three experts: ties merges worth comparing (each scores > 0.5 on a task)
DEMO_MERGES = [([0.9, 0.5, 0.1], [0.7, 0.7, 0.7]), ([0.3, 0.9, 0.5], [0.3, 0.8, 0.6])]

# (weights, densities, normalize, lambda): a zero weight and a density of 1; lambda != 1 adds a multiply-add
FUSED_CASES = [
    ([0.6, 0.25, 0.9], [0.3, 0.55, 0.8], None, 1.0),
    ([0.0, 0.5, 1.0], [0.3, 0.7, 1.0], None, 1.0),
    ([0.6, 0.25, 0.9], [0.2, 0.55, 0.97], None, 0.7),
    ([0.6, 0.25, 0.9], [0.3, 1.0, 0.5], "other", 1.0),
]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (torch.equal would take -0 for +0)."""
    ints = {torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(ints), b.view(ints))


def random_case(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A base [257, 193] ~ N(0, 1) and three task vectors ~ N(0, 0.05²), one with a block of exact zeros."""
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(257, 193, generator=gen)
    deltas = torch.randn(3, 257, 193, generator=gen) * 0.05
    deltas[1, 50:60] = 0  # exact zeros never agree
    return base.to(device, dtype), deltas.to(device, dtype)


def score_demo_merges(demo_paths: Any, folder: Path, device: str, dtype: str) -> dict[Any, dict[str, float]]:
    """The demo's three tasks (50 examples each) on DEMO_MERGES (ties: no random draws) and on expert 0 alone,
    merged and scored on `device` in `dtype`: objectives by merge index, and "expert0"."""
    from demo_specs import write_demo_spec

    from mmmo.evaluation.evaluator import CandidateEvaluator
    from mmmo.run.records import Trial
    from mmmo.spec.schema import load_spec

    spec = load_spec(write_demo_spec(
        demo_paths, folder, limit=50, merge={"method": "ties", "dtype": dtype},
        evaluation={"device": device, "batch_size": 64},
    ))
    evaluator = CandidateEvaluator.from_spec(spec)
    assert evaluator.merger.dtype == getattr(torch, dtype)
    scores: dict[Any, dict[str, float]] = {}
    for i, (w, d) in enumerate(DEMO_MERGES):
        x = evaluator.space.to_unit(torch.tensor(w + d, dtype=torch.float64)).tolist()
        trial = evaluator.evaluate(Trial(id=i, batch=0, x=x, step="test"))
        assert trial.status == "done", trial.error
        assert trial.objectives is not None
        scores[i] = trial.objectives
    expert = evaluator.evaluate_source(0)
    assert expert.objectives is not None, expert.error
    scores["expert0"] = expert.objectives
    return scores


def assert_scores_agree(reference: dict[Any, dict[str, float]], got: dict[Any, dict[str, float]]) -> None:
    """Each merge's task scores within TASK_TOL of the reference's, their mean within MEAN_TOL, its sparsity
    within SPARSITY_RTOL."""
    assert set(got) == set(reference)
    for key, want in reference.items():
        have = got[key]
        assert max(want[t] for t in DEMO_TASKS) > 0.5  # a merge worth comparing
        for t in DEMO_TASKS:
            assert have[t] == pytest.approx(want[t], abs=TASK_TOL), (key, t, want, have)
        mean = sum(have[t] for t in DEMO_TASKS) / len(DEMO_TASKS)
        assert mean == pytest.approx(sum(want[t] for t in DEMO_TASKS) / len(DEMO_TASKS), abs=MEAN_TOL)
        assert have["sparsity"] == pytest.approx(want["sparsity"], rel=SPARSITY_RTOL)
