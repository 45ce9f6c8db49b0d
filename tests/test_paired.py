"""Paired comparisons on shared documents, each checked against a hand computation."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from mmmo.results.paired import (
    compare_candidates,
    mean_over_objectives,
    mean_task_difference,
    paired_difference,
)
from mmmo.run.records import SourceScore, Trial

A01 = [1, 1, 0, 0, 1, 0, 1, 1, 0, 0]
B01 = [1, 1, 1, 1, 1, 1, 1, 0, 1, 0]
A_FLOAT = [0.2, 0.5, 0.4, 0.9]
B_FLOAT = [0.3, 0.7, 0.4, 1.0]


def test_mcnemar_on_zero_one_scores() -> None:
    d = paired_difference(A01, B01)
    # a=0,b=1 (n01) at documents 2, 3, 5, 8; a=1,b=0 (n10) at document 7: 5 discordant pairs.
    # Exact two-sided: 2 * P(X <= min(4, 1)) for X ~ Binomial(5, 1/2) = 2 * (C(5,0) + C(5,1)) / 32 = 12/32.
    assert d.test == "mcnemar"
    assert d.p_value == pytest.approx(0.375, abs=1e-12)
    assert (d.mean_a, d.mean_b, d.diff, d.n) == (pytest.approx(0.5), pytest.approx(0.8), pytest.approx(0.3), 10)
    # d_i = b_i - a_i = [0,0,1,1,0,1,0,-1,1,0]: mean 0.3; squared deviations 5*0.09 + 4*0.49 + 1.69 = 4.1
    se = math.sqrt(4.1 / 9 / 10)
    half = stats.t.ppf(0.975, 9) * se
    assert d.se == pytest.approx(se, abs=1e-12)
    assert (d.low, d.high) == (pytest.approx(0.3 - half, abs=1e-12), pytest.approx(0.3 + half, abs=1e-12))


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    d = paired_difference([1, 0, 1], [1, 0, 1])
    assert (d.diff, d.low, d.high, d.p_value, d.test) == (0.0, 0.0, 0.0, 1.0, "mcnemar")


def test_paired_t_interval_and_p_on_float_scores() -> None:
    d = paired_difference(A_FLOAT, B_FLOAT, confidence=0.9)
    # d = [0.1, 0.2, 0.0, 0.1]: mean 0.1, squared deviations 0 + 0.01 + 0.01 + 0 = 0.02, sd = sqrt(0.02/3),
    # se = sd/2 = sqrt(1/600); t = 0.1/se = sqrt(6).
    se = math.sqrt(1 / 600)
    half = stats.t.ppf(0.95, 3) * se
    assert d.test == "paired t"
    assert (d.mean_a, d.mean_b) == (pytest.approx(0.5, abs=1e-12), pytest.approx(0.6, abs=1e-12))
    assert d.diff == pytest.approx(0.1, abs=1e-12)
    assert d.se == pytest.approx(se, abs=1e-12)
    assert (d.low, d.high) == (pytest.approx(0.1 - half, abs=1e-12), pytest.approx(0.1 + half, abs=1e-12))
    # Student t with 3 df: F(t) = 1/2 + (x/(1+x^2) + atan(x))/pi with x = t/sqrt(3) = sqrt(2), 1+x^2 = 3,
    # so p = 2(1 - F) = 1 - (2/pi)(sqrt(2)/3 + atan(sqrt(2))).
    p = 1 - (2 / math.pi) * (math.sqrt(2) / 3 + math.atan(math.sqrt(2)))
    assert d.p_value == pytest.approx(p, abs=1e-12)


def test_identical_float_vectors_differ_by_nothing() -> None:
    d = paired_difference([0.5, 0.25, 0.75], [0.5, 0.25, 0.75])
    assert (d.diff, d.low, d.high, d.se, d.p_value, d.test) == (0.0, 0.0, 0.0, 0.0, 1.0, "paired t")


def test_too_few_or_unequal_documents_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 documents, got 1"):
        paired_difference([1.0], [0.0])
    with pytest.raises(ValueError, match="at least 2 documents, got 0"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1.0, 0.0], [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="at least one task"):
        mean_task_difference([])


def test_mean_task_difference_combines_independent_tasks() -> None:
    mc = paired_difference(A01, B01)
    pt = paired_difference(A_FLOAT, B_FLOAT)
    d = mean_task_difference([mc, pt])
    # diff = (0.3 + 0.1)/2; se = sqrt(4.1/90 + 1/600)/2; z = 0.2/se; p = 2(1 - Phi(z)) = erfc(z/sqrt(2))
    se = math.sqrt(4.1 / 90 + 1 / 600) / 2
    half = stats.norm.ppf(0.975) * se
    assert d.test == "mean of tasks" and d.n == 14
    assert (d.mean_a, d.mean_b) == (pytest.approx(0.5, abs=1e-12), pytest.approx(0.7, abs=1e-12))
    assert d.diff == pytest.approx(0.2, abs=1e-12) and d.se == pytest.approx(se, abs=1e-12)
    assert (d.low, d.high) == (pytest.approx(0.2 - half, abs=1e-12), pytest.approx(0.2 + half, abs=1e-12))
    assert d.p_value == pytest.approx(math.erfc(0.2 / se / math.sqrt(2)), abs=1e-12)
    assert mean_task_difference([pt]) == pt  # one task: its own exact t-interval


def test_a_stopped_trial_is_compared_on_its_prefix_of_each_leaf() -> None:
    trial = Trial(3, 1, [0.5], "acquisition", "done", stopped=True, outcomes={
        "grp": {"leaf_a": "1101", "leaf_b": [0.5, 0.25]},
    })
    source = SourceScore(name="arith", objectives={"grp": 0.5}, outcomes={
        "grp": {"leaf_a": "110100", "leaf_b": [0.5, 0.5, 1.0]},
        "solo": {"solo": "0101"},
    })
    out = compare_candidates(source, trial, ["grp", "solo", "sparsity"])
    assert out["solo"] is None and out["sparsity"] is None  # outcomes on one side only, or on neither
    d = out["grp"]
    assert d is not None
    # aligned: leaf_a's first 4 documents, then leaf_b's first 2: a = [1,1,0,1,0.5,0.5], b = [1,1,0,1,0.5,0.25]
    assert d.n == 6 and d.test == "paired t"
    assert d.mean_a == pytest.approx(4.0 / 6, abs=1e-12) and d.mean_b == pytest.approx(3.75 / 6, abs=1e-12)
    # d = [0,0,0,0,0,-0.25]: mean -1/24; sum d^2 - n mean^2 = 1/16 - 6/576 = 5/96; se = sqrt(5/96/5/6) = 1/24
    assert d.diff == pytest.approx(-1 / 24, abs=1e-12) and d.se == pytest.approx(1 / 24, abs=1e-12)
    half = stats.t.ppf(0.975, 5) / 24
    assert (d.low, d.high) == (pytest.approx(-1 / 24 - half, abs=1e-12), pytest.approx(-1 / 24 + half, abs=1e-12))


class Scored:
    def __init__(self, outcomes: dict) -> None:
        self.outcomes = outcomes


def test_objectives_on_the_same_documents_are_paired_once_not_counted_as_independent() -> None:
    # Two metrics of one task (same 8 documents) and one other task (6 documents).
    a = Scored({"acc": {"t": "00110100"}, "acc_norm": {"t": "00110100"}, "other": {"u": "010101"}})
    b = Scored({"acc": {"t": "11110110"}, "acc_norm": {"t": "11110110"}, "other": {"u": "110111"}})
    d = mean_over_objectives(a, b, [["acc", "acc_norm"], ["other"]])
    same = paired_difference([0, 0, 1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 0, 1, 1, 0])  # +3/8, the shared task
    other = paired_difference([0, 1, 0, 1, 0, 1], [1, 1, 0, 1, 1, 1])  # +2/6
    assert d is not None
    # Weights 2 (the two metrics, perfectly correlated: one se, not two independent ones) and 1.
    assert d.diff == pytest.approx((2 * 3 / 8 + 2 / 6) / 3, abs=1e-12)
    assert d.se == pytest.approx(math.sqrt((2 * same.se) ** 2 + other.se**2) / 3, abs=1e-12)
    assert d.n == 8 + 6  # each document once
    assert mean_over_objectives(a, Scored({}), [["acc"]]) is None
