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


def test_a_run_record_scores_the_take_home_merge_the_library_chooses() -> None:
    """The take-home column is the TRUE mean task score of `choose_take_home`'s pick among the trials scored in
    full; the best-observed column that of the highest observed mean, so a lucky, noisy observation separates them."""
    from benchmarks.stage_runs import run_record

    names, tasks = ["a", "b"], ["a", "b"]
    x = [[0.1, 0.1], [0.12, 0.1], [0.1, 0.12], [0.9, 0.9], [0.5, 0.5], [0.9, 0.1], [0.1, 0.9]]
    observed = [[0.6, 0.6], [0.61, 0.6], [0.6, 0.61], [0.65, 0.65], [0.9, 0.9], [0.3, 0.3], [0.3, 0.3]]
    stderr = [0.01, 0.01, 0.01, 0.3, 0.01, 0.01, 0.01]  # trial 3's scores are nearly noise
    true = {0: [0.6, 0.6], 1: [0.61, 0.6], 2: [0.6, 0.61], 3: [0.4, 0.4], 4: [0.2, 0.2], 5: [0.3, 0.3], 6: [0.3, 0.3]}
    trials = [
        Trial(
            id=i, batch=0, x=xi, step="sobol", status="done", objectives=dict(zip(names, y)),
            stderr={"a": se, "b": se}, n_examples={"a": 50, "b": 50}, stopped=i == 4, stages_scored=1,
        )
        for i, (xi, y, se) in enumerate(zip(x, observed, stderr))
    ]
    record = run_record(trials, names, tasks, [0.0, 0.0], 1.0, true)
    # Trial 4 looks best but was stopped after part of its documents: neither column may take it.
    assert record["best_task"] == pytest.approx(0.4)  # the lucky trial 3
    assert record["take_home"] == pytest.approx(0.605)  # a well-measured one, trial 1 or 2
    assert record["stopped"] == 1
