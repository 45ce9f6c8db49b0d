"""Paired comparison of two candidates (merges or source models) scored on the same documents.

Every candidate of a run is scored on the same documents in the same order (mmmo.run.documents), so two candidates'
scores differ by a per-document difference whose spread is far smaller than either score's own: a paired test
sees a gain that two independent standard errors would call noise. Torch-free: numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mmmo.run.documents import EncodedOutcomes, decode_outcomes
from mmmo.run.records import Scored


@dataclass(frozen=True)
class PairedDifference:
    """Candidate b against candidate a on the same documents: `diff = mean_b - mean_a`, [low, high] its CI.

    `se` is the standard error of `diff`; `n` the documents compared; `test` names where `p_value` (two-sided,
    no difference) comes from: "mcnemar", "paired t" or "mean of tasks".
    """

    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    n: int
    p_value: float
    test: str
    se: float


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0.0) | (values == 1.0)))


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p for paired 0/1 values: a binomial test (p = 1/2) on the discordant pairs."""
    n01 = int(np.sum((a == 0.0) & (b == 1.0)))
    n10 = int(np.sum((a == 1.0) & (b == 0.0)))
    discordant = n01 + n10
    if discordant == 0:
        return 1.0
    return min(1.0, 2.0 * float(stats.binom.cdf(min(n01, n10), discordant, 0.5)))


def _p_from_statistic(diff: float, se: float, sf: Callable[[float], float]) -> float:
    # A difference with no spread at all is certain: p = 1 when it is 0, else 0 (t or z is infinite).
    if se == 0.0:
        return 1.0 if diff == 0.0 else 0.0
    return min(1.0, 2.0 * float(sf(abs(diff) / se)))


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> PairedDifference:
    """b against a on `n >= 2` aligned documents: a paired t-interval on `d_i = b_i - a_i`.

    CI: `mean(d) ± t_{n-1,(1+c)/2} · sd(d, ddof=1)/sqrt(n)` (`[diff, diff]` when sd is 0). p: exact McNemar when
    every value is 0 or 1, else the paired t-test's.
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != xb.shape:
        raise ValueError(f"paired values need two vectors of one length, got shapes {xa.shape} and {xb.shape}")
    n = xa.shape[0]
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 documents, got {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    d = xb - xa
    diff = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = 0.0 if se == 0.0 else float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * se
    if _is_binary(xa) and _is_binary(xb):
        p, test = mcnemar_p(xa, xb), "mcnemar"
    else:
        p, test = _p_from_statistic(diff, se, lambda t: stats.t.sf(t, n - 1)), "paired t"
    return PairedDifference(
        mean_a=float(xa.mean()), mean_b=float(xb.mean()), diff=diff, low=diff - half, high=diff + half,
        n=n, p_value=p, test=test, se=se,
    )


def mean_task_difference(
    per_task: Sequence[PairedDifference], *, confidence: float = 0.95, weights: Sequence[int] | None = None
) -> PairedDifference:
    """The difference of mean task scores: the (`weights`-weighted) average of independent differences.

    Their documents are independent, so `se = sqrt(sum w_t² se_t²) / sum w_t`; CI and p use the normal quantile.
    One difference of weight 1 is its own mean: it comes back unchanged (its t-interval is the exact one).
    """
    if not per_task:
        raise ValueError("a mean over tasks needs at least one task's difference")
    w = [1] * len(per_task) if weights is None else list(weights)
    if len(per_task) == 1 and w[0] == 1:
        return per_task[0]
    total = sum(w)
    diff = sum(wi * t.diff for wi, t in zip(w, per_task)) / total
    se = math.sqrt(sum((wi * t.se) ** 2 for wi, t in zip(w, per_task))) / total
    half = 0.0 if se == 0.0 else float(stats.norm.ppf((1.0 + confidence) / 2.0)) * se
    return PairedDifference(
        mean_a=sum(wi * t.mean_a for wi, t in zip(w, per_task)) / total,
        mean_b=sum(wi * t.mean_b for wi, t in zip(w, per_task)) / total,
        diff=diff, low=diff - half, high=diff + half,
        n=sum(t.n for t in per_task),
        p_value=_p_from_statistic(diff, se, stats.norm.sf),
        test="mean of tasks", se=se,
    )


def mean_over_objectives(
    a: Scored, b: Scored, groups: Sequence[Sequence[str]], *, confidence: float = 0.95
) -> PairedDifference | None:
    """b against a on the mean of the objectives in `groups`; None where any lacks outcomes on either side.

    `groups`: the objectives grouped by the documents they score (`RunSummary.document_groups`, from the run's
    document plan). Objectives of one group (two metrics of one task) are not independent: their per-document
    differences are averaged first and paired once, with the group's weight; the groups' documents are
    independent (`mean_task_difference`). `n` counts each document once.
    """
    pairs_of: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for group in groups:
        by_length: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for name in group:
            xa, xb = aligned_values(a.outcomes.get(name, {}), b.outcomes.get(name, {}))
            if xa.shape[0] < 2:
                return None
            by_length.setdefault(xa.shape[0], []).append((xa, xb))  # equal in a run; apart if not, never averaged
        pairs_of.extend(by_length.values())
    diffs = [
        paired_difference(np.mean([p[0] for p in pairs], axis=0), np.mean([p[1] for p in pairs], axis=0),
                          confidence=confidence)
        for pairs in pairs_of
    ]
    return mean_task_difference(diffs, confidence=confidence, weights=[len(p) for p in pairs_of])


def aligned_values(
    a: Mapping[str, EncodedOutcomes], b: Mapping[str, EncodedOutcomes]
) -> tuple[np.ndarray, np.ndarray]:
    """Two candidates' values on one objective as two aligned `[n]` float64 vectors.

    Per leaf task both hold (in a's order), the common prefix: a candidate stopped early by evaluation.stages
    holds the first k documents of the run's order. The leaves' prefixes are concatenated.
    """
    xs: list[float] = []
    ys: list[float] = []
    for leaf, encoded in a.items():
        if leaf not in b:
            continue
        va, vb = decode_outcomes(encoded), decode_outcomes(b[leaf])
        k = min(len(va), len(vb))
        xs += va[:k]
        ys += vb[:k]
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def compare_candidates(
    a: Scored, b: Scored, objectives: Sequence[str], *, confidence: float = 0.95
) -> dict[str, PairedDifference | None]:
    """b against a on each objective's shared documents; None where either lacks outcomes (or shares < 2)."""
    out: dict[str, PairedDifference | None] = {}
    for name in objectives:
        xa, xb = aligned_values(a.outcomes.get(name, {}), b.outcomes.get(name, {}))
        out[name] = paired_difference(xa, xb, confidence=confidence) if xa.shape[0] >= 2 else None
    return out


def outcome_stderr(leaves: Mapping[str, EncodedOutcomes]) -> float | None:
    """Standard error of one candidate's mean over its documents (`sd(ddof=1)/sqrt(n)`); None under 2 documents."""
    values = np.asarray([v for enc in leaves.values() for v in decode_outcomes(enc)], dtype=np.float64)
    if values.shape[0] < 2:
        return None
    return float(values.std(ddof=1)) / math.sqrt(values.shape[0])
