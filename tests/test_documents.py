"""Which documents a run scores (seeded, nested, stable), stage sizes, outcome encoding and plan comparison."""

from __future__ import annotations

import pytest

from mmmo.run.documents import (
    TaskDocuments,
    decode_outcomes,
    document_limit,
    document_order,
    encode_outcomes,
    plan_differences,
    plan_from_json,
    plan_to_json,
    shared_documents,
    stage_sizes,
    subset_size,
)
from mmmo.runtime.errors import MmmoError


def test_random_order_is_a_seeded_permutation_stable_across_machines() -> None:
    order = document_order(50, "demo_arith", 0, "random")
    assert sorted(order) == list(range(50))
    assert order != list(range(50))
    # A hash of (seed, task, index): these values are what every machine and Python version computes.
    assert order[:8] == [32, 48, 13, 31, 14, 33, 8, 16]
    assert document_order(50, "demo_arith", 1, "random") != order
    assert document_order(50, "demo_sort", 0, "random") != order
    assert document_order(50, "demo_arith", 0, "first") == list(range(50))


def test_a_larger_limit_keeps_the_smaller_sample() -> None:
    small = document_order(40, "t", 3, "random")[: subset_size(40, 10)]
    large = document_order(40, "t", 3, "random")[: subset_size(40, 20)]
    assert large[:10] == small


@pytest.mark.parametrize(
    ("n", "limit", "size"), [(50, None, 50), (50, 10, 10), (50, 80, 50), (50, 0.25, 13), (6, 0.5, 3), (6, 1.0, 6)]
)
def test_subset_size_counts_and_fractions(n: int, limit: float | None, size: int) -> None:
    assert subset_size(n, limit) == size


def test_stage_sizes_are_cumulative_prefixes_of_at_least_one_document() -> None:
    assert stage_sizes(50, [0.25, 1.0]) == [13, 50]
    assert stage_sizes(10, [0.3, 0.6, 1.0]) == [3, 6, 10]
    assert stage_sizes(2, [0.1, 1.0]) == [1, 2]
    assert stage_sizes(5, [0.1, 0.2, 1.0]) == [1, 2, 5]  # raised: every stage adds a document
    assert stage_sizes(3, [0.25, 0.5, 1.0]) == [1, 2, 3]
    assert stage_sizes(50, None) == [50]
    with pytest.raises(ValueError, match="2 documents cannot fill 3 stages"):
        stage_sizes(2, [0.2, 0.5, 1.0])


def test_outcomes_are_a_bit_string_for_0_1_metrics_and_floats_otherwise() -> None:
    assert encode_outcomes([1.0, 0.0, 0.0, 1.0]) == "1001"
    assert decode_outcomes("1001") == [1.0, 0.0, 0.0, 1.0]
    assert encode_outcomes([0.5, 1.0]) == [0.5, 1.0]
    assert decode_outcomes([0.5, 1.0]) == [0.5, 1.0]
    assert encode_outcomes([]) == ""


def test_plan_differences_name_what_changed() -> None:
    a = {"arith": [TaskDocuments("demo_arith", (3, 1), 50, "abc")]}
    assert plan_from_json(plan_to_json(a)) == a
    assert plan_differences(a, a) == []
    assert plan_differences(a, {"arith": [TaskDocuments("demo_arith", (3, 1), 60, "abc")]}) == [
        "task 'demo_arith' held 50 documents, now 60"
    ]
    assert plan_differences(a, {"arith": [TaskDocuments("demo_arith", (1, 3), 50, "abc")]}) == [
        "task 'demo_arith': other document ids are chosen"
    ]
    assert plan_differences(a, {"arith": [TaskDocuments("demo_arith", (3, 1), 50, "abd")]}) == [
        "task 'demo_arith': the chosen documents' contents changed"
    ]
    assert plan_differences(a, {}) == ["objective 'arith' is gone"]


def test_objectives_share_documents_when_the_plan_gives_them_the_same_ids() -> None:
    def docs(task: str, ids: tuple[int, ...]) -> list[TaskDocuments]:
        return [TaskDocuments(task, ids, 100, "f")]

    plan = {
        "acc": docs("arith", (3, 1, 2)), "acc_norm": docs("arith", (3, 1, 2)),  # two metrics of one task
        "all": docs("sort", (0, 1, 2, 3)), "all_again": docs("sort", (0, 1, 2, 3)),  # limit 1.0 beside no limit
        "fewer": docs("sort", (0, 1)),  # the same task on fewer documents: its own group
    }
    assert shared_documents(plan, ["acc", "all", "acc_norm", "fewer", "all_again"]) == [
        ["acc", "acc_norm"], ["all", "all_again"], ["fewer"],
    ]


@pytest.mark.parametrize("limit, read", [(None, None), (1.0, None), (0.5, 0.5), (20, 20), (20.0, 20)])
def test_a_limit_reads_as_the_documents_it_chooses(limit, read) -> None:
    assert document_limit(limit, "t") == read


@pytest.mark.parametrize("limit", [0, 0.0, 1.5, -3])
def test_a_bad_limit_is_one_line_naming_the_objective(limit) -> None:
    with pytest.raises(MmmoError, match="objective 't': limit must be a count >= 1 or a fraction in"):
        document_limit(limit, "t")
