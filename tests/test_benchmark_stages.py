"""The pure parts of the staged-evaluation benchmark: its per-document Bernoulli outcomes
(benchmarks/bernoulli_docs.py), its stage scoring and its command-line parsing (benchmarks/stages.py)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import bernoulli_docs, stages
from mmmo.run.records import Trial


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_bernoulli_outcomes_have_the_surrogates_accuracy(p: float) -> None:
    z = torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    answers = bernoulli_docs.document_answers(p, z, 0.5, 3, [0.25, 0.5], 1)
    assert set(answers) <= {0.0, 1.0}
    assert abs(sum(answers) / len(answers) - p) < 3 * math.sqrt(p * (1 - p) / len(answers))


def test_bernoulli_outcomes_are_fixed_per_seed_and_candidate() -> None:
    z = torch.randn(200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = bernoulli_docs.document_answers(0.5, z, 0.5, 0, [0.1, 0.2], 0)
    assert bernoulli_docs.document_answers(0.5, z, 0.5, 0, [0.1, 0.2 + 1e-15], 0) == a  # x rounded to 12 digits
    assert bernoulli_docs.document_answers(0.5, z, 0.5, 1, [0.1, 0.2], 0) != a  # another seed
    assert bernoulli_docs.document_answers(0.5, z, 0.5, 0, [0.1, 0.3], 0) != a  # another candidate
    assert bernoulli_docs.document_answers(0.5, z, 0.5, 0, [0.1, 0.2], 1) != a  # another task


def test_two_stages_score_means_stderrs_and_counts_of_the_documents_so_far() -> None:
    answers = {"a": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]}
    names = ["a", "sparsity"]
    t = bernoulli_docs.score_next_stage(
        Trial(id=0, batch=0, x=[0.5], step="sobol"), answers, {"sparsity": -0.2}, (0.5, 1.0), names
    )
    assert (t.status, t.stages_scored) == ("partial", 1)
    assert t.objectives == {"a": 0.75, "sparsity": -0.2}
    assert t.stderr == {"a": pytest.approx(0.25), "sparsity": 0.0}  # sd 0.5 (ddof 1) / sqrt(4)
    assert t.n_examples == {"a": 4}
    assert t.outcomes == {"a": {"a": "1011"}}

    t = bernoulli_docs.score_next_stage(t, answers, {"sparsity": -0.2}, (0.5, 1.0), names)
    assert (t.status, t.stages_scored, t.stopped) == ("done", 2, False)
    assert t.objectives == {"a": 0.5, "sparsity": -0.2}
    assert t.stderr["a"] == pytest.approx(math.sqrt(2 / 7) / math.sqrt(8))
    assert t.n_examples == {"a": 8}
    assert t.outcomes == {"a": {"a": "10110010"}}
    with pytest.raises(ValueError):
        bernoulli_docs.score_next_stage(t, answers, {"sparsity": -0.2}, (0.5, 1.0), names)

    one = bernoulli_docs.score_next_stage(
        Trial(id=1, batch=0, x=[0.5], step="sobol"), answers, {"sparsity": -0.2}, None, names
    )
    assert (one.status, one.stages_scored, one.n_examples) == ("done", 1, {"a": 8})
    assert bernoulli_docs.documents_scored([t, one], ["a"]) == 16


def test_seeds_and_variants_parse() -> None:
    assert stages.parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert stages.parse_variant("stages=0.25,1.0 min_chance=0.2") == (
        "stages=0.25,1.0 min_chance=0.2",
        {"stages": (0.25, 1.0), "stage_min_chance": 0.2},
    )
    assert stages.parse_variant("full") == ("full", {"stages": None})
