"""The wide suite's problems: each family's function seen on the unit cube, its noise, its outcome constraints,
and a constrained problem's hypervolume counting feasible points only."""

from __future__ import annotations

import pytest
import torch
from botorch.test_functions.multi_objective import VehicleSafety

from benchmarks.metrics import hv_curve
from benchmarks.report import key_minimums
from benchmarks.results import StrategyRun
from benchmarks.suite_problems import FAMILIES, NOISE_SHARE, SUITE_BUDGET, SUITE_PROBLEMS, suite_problem
from benchmarks.wide_suite import DEFAULT, FamilyResult, cell, pinned_share


def test_the_suite_is_wide_and_keeps_a_third_out_of_the_design_loop() -> None:
    fams = list(FAMILIES.values())
    assert len(fams) >= 12
    assert sum(f.held_out for f in fams) >= len(fams) / 3
    assert sum(bool(f.constrained) for f in fams) >= 2
    assert len(SUITE_PROBLEMS) == 2 * len(fams)  # each with and without noise
    objectives = {suite_problem(f"suite-{f.name}", SUITE_BUDGET).info["function"] for f in fams}
    assert len(objectives) >= 10


def test_a_family_is_its_function_on_the_unit_cube_maximised() -> None:
    problem = suite_problem("suite-vehiclesafety", SUITE_BUDGET)
    fn = VehicleSafety(negate=True).to(torch.float64)
    x = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(problem.evaluate(x), fn(1.0 + 2.0 * x))  # its domain is [1, 3]^5
    assert problem.ref_point == pytest.approx(fn.ref_point.tolist())
    assert problem.noise is None and problem.minimums == {}


def test_a_noisy_variant_tells_its_noise_and_a_constrained_one_its_minimums() -> None:
    noisy = suite_problem("suite-zdt2-noisy", SUITE_BUDGET)
    clean = suite_problem("suite-zdt2", SUITE_BUDGET)
    sample = clean.evaluate(torch.quasirandom.SobolEngine(6, scramble=True, seed=0).draw(1024, dtype=torch.float64))
    assert noisy.info["noise_std"] == pytest.approx((NOISE_SHARE * sample.std(dim=0)).tolist())
    Y_obs, stderr = noisy.noise(torch.zeros(4000, 2, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert Y_obs.std(dim=0).tolist() == pytest.approx(noisy.info["noise_std"], rel=0.05)
    assert stderr[0].tolist() == pytest.approx(noisy.info["noise_std"])
    constrained = suite_problem("suite-dtlz5-constrained", SUITE_BUDGET)
    assert set(constrained.minimums) == {"f0", "f1"}
    assert constrained.target().minimums == tuple((i, constrained.minimums[f"f{i}"]) for i in (0, 1))


def test_an_infeasible_point_adds_no_hypervolume() -> None:
    key = {"objectives": ["f0", "f1"], "minimums": {"f1": 0.5}}
    ys = [[1.0, 1.0], [3.0, 0.2], [2.0, 2.0]]
    assert hv_curve(ys, [0.0, 0.0]) == pytest.approx([1.0, 1.0 + 0.4, 4.0 + 0.2])
    assert hv_curve(ys, [0.0, 0.0], key_minimums(key)) == pytest.approx([1.0, 1.0, 4.0])


def test_the_verdict_against_a_baseline_uses_its_quartiles() -> None:
    family = FAMILIES["zdt1"]
    base = [1.0, 2.0, 3.0, 4.0, 5.0]  # quartiles 2 and 4
    verdict = lambda mine: FamilyResult(family, "suite-zdt1", {"mm-mo forecast prior": mine, "qnehvi": base}, None, 2).verdict()  # noqa: E731
    assert [verdict([v] * 5) for v in (1.5, 2.0, 4.0, 4.5)] == ["loss", "tie", "tie", "win"]


def test_the_default_column_is_the_pinned_prior_from_3_objectives_and_the_fitted_one_below() -> None:
    hv = {"mm-mo forecast prior": [1.0] * 5, "mm-mo worst prior": [3.0] * 5, "qnehvi": [1.0, 2.0, 2.0, 2.0, 3.0]}
    two = FamilyResult(FAMILIES["zdt1"], "suite-zdt1", hv, None, n_objectives=2)
    four = FamilyResult(FAMILIES["carsideimpact"], "suite-carsideimpact", hv, None, n_objectives=4)
    assert two.runs(DEFAULT) == hv["mm-mo forecast prior"] and four.runs(DEFAULT) == hv["mm-mo worst prior"]
    assert (two.verdict(mine=DEFAULT), four.verdict(mine=DEFAULT)) == ("loss", "win")
    assert FamilyResult(FAMILIES["gmm"], "suite-gmm", {"qnehvi": [1.0]}, None, 3).verdict(mine=DEFAULT) == "–"


def test_a_cell_says_its_seed_count_when_it_is_not_the_header_s() -> None:
    assert cell([1.0, 2.0, 3.0, 4.0, 5.0], 5.0) == "60.0 [40.0–80.0]"
    assert cell([2.0], 4.0) == "50.0 [50.0–50.0] (1 seed)"
    assert cell([1.0] * 10, 1.0, seeds=10) == "100.0 [100.0–100.0]" and cell([1.0] * 3, 1.0, 10).endswith("(3 seeds)")


def test_the_pinned_share_counts_the_candidate_s_gp_proposals() -> None:
    def run(strategy: str, priors: list[str | None]) -> StrategyRun:
        return StrategyRun(strategy, 0, [[0.0]] * len(priors), [[0.0]] * len(priors), 1.0, priors=priors)

    runs = [run("mm-mo forecast prior", [None, None, "worst (forecast error 1 vs 2)", "fitted (forecast error 1 vs 2)"]),
            run("mm-mo forecast prior", [None, "worst (forecast error 1 vs 2)"]), run("qnehvi", [None, "fitted"])]
    assert pinned_share(runs) == pytest.approx(2 / 3)
    assert pinned_share(runs[2:]) is None
