"""Weak-to-strong step: ranking, DE/rand/1, binomial crossover, on hand-built inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmmo.optimizer.weak_to_strong import (
    binomial_crossover,
    crossover_mask,
    de_rand_1,
    distinct_triples,
    standardised_score,
    top_k_configs,
    weak_to_strong,
)

T = torch.float64


def test_ranking_uses_standardised_not_raw_sum() -> None:
    # Raw sums 101, 93, 112 would rank 2, 0, 1; z-scores (col0 std 1, col1 std 10) sum to -1, 0, 1.
    Y = torch.tensor([[1.0, 100.0], [3.0, 90.0], [2.0, 110.0]], dtype=T)
    torch.testing.assert_close(standardised_score(Y), torch.tensor([-1.0, 0.0, 1.0], dtype=T))
    X = torch.tensor([[0.0], [1.0], [2.0]], dtype=T)
    torch.testing.assert_close(top_k_configs(X, Y, 2), torch.tensor([[2.0], [1.0]], dtype=T))
    torch.testing.assert_close(top_k_configs(X, Y, 10), torch.tensor([[2.0], [1.0], [0.0]], dtype=T))


def test_constant_objective_contributes_nothing_to_the_score() -> None:
    Y = torch.tensor([[0.5, 1.0], [0.5, 3.0]], dtype=T)
    torch.testing.assert_close(standardised_score(Y), torch.tensor([-0.70710678, 0.70710678], dtype=T))


def test_de_rand_1_numbers_and_clipping() -> None:
    a, b, c = (torch.tensor([v], dtype=T) for v in ([0.5, 0.5], [0.9, 0.2], [0.1, 0.4]))
    torch.testing.assert_close(de_rand_1(a, b, c, 0.5), torch.tensor([[0.9, 0.4]], dtype=T))
    a, b, c = (torch.tensor([v], dtype=T) for v in ([0.9, 0.1], [1.0, 0.0], [0.0, 1.0]))
    torch.testing.assert_close(de_rand_1(a, b, c, 0.5), torch.tensor([[1.0, 0.0]], dtype=T))


def test_distinct_triples_are_distinct() -> None:
    idx = distinct_triples(3, 50, torch.Generator().manual_seed(0))
    assert idx.shape == (50, 3)
    assert all(sorted(row) == [0, 1, 2] for row in idx.tolist())
    with pytest.raises(ValueError):
        distinct_triples(2, 1, torch.Generator())


def test_crossover_mask_forces_one_mutant_coordinate() -> None:
    g = torch.Generator().manual_seed(1)
    none = crossover_mask(200, 4, 0.0, g)
    assert none.sum(-1).tolist() == [1] * 200  # cr = 0: exactly the forced j_rand
    assert set(none.float().argmax(-1).tolist()) == {0, 1, 2, 3}  # j_rand is random
    assert bool(crossover_mask(5, 4, 1.0, g).all())
    half = crossover_mask(2000, 4, 0.5, g).double().mean().item()
    assert half == pytest.approx(0.5 + 0.5 / 4, abs=0.03)  # cr + (1 - cr) / d


def test_binomial_crossover_takes_mutant_where_masked() -> None:
    target = torch.tensor([[0.0, 0.0, 0.0]], dtype=T)
    mutant = torch.tensor([[1.0, 1.0, 1.0]], dtype=T)
    mask = torch.tensor([[True, False, True]])
    torch.testing.assert_close(
        binomial_crossover(target, mutant, mask), torch.tensor([[1.0, 0.0, 1.0]], dtype=T)
    )


def _possible_mutants(pool: torch.Tensor, f: float) -> torch.Tensor:
    return torch.stack(
        [de_rand_1(pool[a], pool[b], pool[c], f) for a, b, c in itertools.permutations(range(3))]
    )


def test_weak_to_strong_mutants_come_from_the_top_k_only() -> None:
    # Six configurations; the top three by (single) task objective are rows 1, 3, 5.
    X = torch.tensor([[0.0, 0.0], [0.2, 0.8], [0.1, 0.1], [0.6, 0.4], [0.05, 0.0], [0.9, 0.5]], dtype=T)
    Y = torch.tensor([[0.1], [0.9], [0.2], [0.8], [0.0], [0.7]], dtype=T)
    proposals = torch.full((20, 2), 0.33, dtype=T)
    out, from_mutant = weak_to_strong(
        proposals, X, Y, top_k=3, f=0.5, cr=1.0, generator=torch.Generator().manual_seed(0)
    )
    # e.g. (0.2, 0.8) + 0.5 ((0.6, 0.4) - (0.9, 0.5)) = (0.05, 0.75)
    allowed = _possible_mutants(X[[1, 3, 5]], 0.5)
    assert any(torch.allclose(m, torch.tensor([0.05, 0.75], dtype=T)) for m in allowed)
    for row in out:
        assert any(torch.allclose(row, m) for m in allowed)
    assert from_mutant.all()
    assert len({tuple(r) for r in out.tolist()}) > 1  # different triples for different proposals


def test_weak_to_strong_low_cr_changes_one_coordinate_and_is_seeded() -> None:
    X = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.5, 0.3], [0.4, 0.8, 0.6]], dtype=T)
    Y = torch.tensor([[1.0], [2.0], [3.0]], dtype=T)
    proposals = torch.tensor([[0.5, 0.5, 0.5], [0.25, 0.75, 0.5]], dtype=T)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return weak_to_strong(proposals, X, Y, top_k=5, f=0.5, cr=0.0, generator=g)

    out, _ = run(3)
    assert ((out != proposals).sum(-1) <= 1).all()
    torch.testing.assert_close(run(3)[0], out)
    assert ((out >= 0) & (out <= 1)).all()


def test_weak_to_strong_needs_three_configurations() -> None:
    proposals = torch.rand(4, 2, dtype=T)
    out, from_mutant = weak_to_strong(
        proposals, torch.rand(2, 2, dtype=T), torch.rand(2, 1, dtype=T), top_k=5, f=0.5, cr=0.5,
        generator=torch.Generator(),
    )  # fmt: skip
    torch.testing.assert_close(out, proposals)
    assert not from_mutant.any()
