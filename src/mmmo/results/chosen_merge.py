"""The lead of report.md: the chosen merge (the take-home merge: `RunSummary.take_home`) and how it was chosen,
against the best expert and every source, with paired confidence intervals on the documents both were scored on."""

from __future__ import annotations

from dataclasses import dataclass

from mmmo.results.paired import PairedDifference, compare_candidates, mean_over_objectives
from mmmo.results.summary import RunSummary
from mmmo.run.records import SourceScore, Trial

BASE = "base"  # the name a run gives its base model among the sources
CONFIDENCE = 0.95
NO_OUTCOMES = "no per-document outcomes in this run"


@dataclass(frozen=True)
class SourceComparison:
    """The chosen merge against one source: `merge - source` per task objective and on the mean task score.

    A task is None where either side has no per-document outcomes; `mean` is None unless every task has one.
    `plain_mean` is the difference of the two mean task scores as recorded (always there).
    """

    source: SourceScore
    per_task: dict[str, PairedDifference | None]
    mean: PairedDifference | None
    plain_mean: float


def best_expert(summary: RunSummary) -> SourceScore | None:
    """The fine-tuned source (not the base) with the highest mean task score; None when none was scored."""
    scored = [(summary.source_mean_task_score(s), s) for s in summary.sources if s.name != BASE]
    experts = [(score, s) for score, s in scored if score is not None]
    return max(experts, key=lambda pair: pair[0], default=(None, None))[1]


def compare_with_source(summary: RunSummary, chosen: Trial, source: SourceScore) -> SourceComparison:
    """`chosen - source` on each task objective's shared documents, and on the mean task score."""
    per_task = compare_candidates(source, chosen, summary.task_names, confidence=CONFIDENCE)
    mean = mean_over_objectives(source, chosen, summary.document_groups, confidence=CONFIDENCE)
    source_mean = summary.source_mean_task_score(source)
    assert source_mean is not None
    return SourceComparison(source, per_task, mean, summary.mean_task_score(chosen) - source_mean)


def _interval(d: PairedDifference) -> str:
    return f"[{d.low:+.3f}, {d.high:+.3f}]"


def format_p(p: float) -> str:
    """A p-value as the report prints it: three decimals, or `p<0.001`."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def verdict(c: SourceComparison) -> str:
    """One plain sentence: does the chosen merge differ from this source beyond noise?"""
    name, d = c.source.name, c.mean
    if d is None:
        return f"With {NO_OUTCOMES}, there is no confidence interval: whether that is beyond noise is unknown."
    p = format_p(d.p_value)
    # Beyond noise only where the interval and the test agree (a 0/1 task's exact McNemar can be the stricter).
    if d.low > 0 and d.p_value < 1 - CONFIDENCE:
        return f"That gain holds beyond noise: the whole 95% interval lies above zero ({p})."
    if d.high < 0 and d.p_value < 1 - CONFIDENCE:
        return f"The merge is worse than {name} beyond noise: the whole 95% interval lies below zero ({p})."
    if d.low > 0 or d.high < 0:
        return (
            f"That difference is borderline: the 95% interval excludes zero but the test gives {p}, so these "
            f"documents do not establish it."
        )
    return (
        f"That difference is within noise: the 95% interval includes zero ({p}), so these documents do not tell "
        f"the merge and {name} apart."
    )


def lead_sentence(summary: RunSummary, chosen: Trial, expert: SourceComparison | None) -> str:
    """"Trial 19 scores 0.833 on the mean task score, +0.106 against the best expert arith (95% CI [...], n docs)"."""
    method = f" ({chosen.method})" if chosen.method else ""  # a search over methods names the one merged
    head = f"Trial {chosen.id}{method} scores {summary.mean_task_score(chosen):.3f} on the mean task score"
    if expert is None:
        return head + "; no expert model was scored to compare it with."
    d = expert.mean
    if d is None:
        return head + f", {expert.plain_mean:+.3f} against the best expert {expert.source.name}."
    return (
        head + f", {d.diff:+.3f} against the best expert {expert.source.name} "
        f"(95% CI {_interval(d)}, {d.n} paired documents)."
    )


def how_chosen(summary: RunSummary) -> str:
    """"Chosen as the take-home merge by the highest posterior mean of ... among 28 trials ...", its observed value
    of the preference where that is not the mean task score, and the requirements with the trials that break one."""
    choice = summary.take_home
    line = f"Chosen as the take-home merge by {choice.how}"
    if choice.preference != "the mean task score" and choice.value is not None:
        line += f"; it scores {choice.value:.3f} on {choice.preference}"
    line += "."
    if choice.requirements:
        broken = len(choice.infeasible)
        line += (
            f" Requirements (take_home.require): {', '.join(choice.requirements)}; {broken} of {choice.considered} "
            f"trials scored in full break at least one."
        )
    return line


def _cell(d: PairedDifference | None, plain: float) -> str:
    if d is None:
        return f"{plain:+.3f}"
    return f"{d.diff:+.3f} {_interval(d)}, {format_p(d.p_value)}"


def comparison_table(summary: RunSummary, chosen: Trial, comparisons: list[SourceComparison]) -> list[str]:
    """Markdown rows: per task objective (then the mean) the merge's score and `merge - source` per source."""
    assert chosen.objectives is not None
    head = f"| objective | trial {chosen.id} | " + " | ".join(f"vs {c.source.name}" for c in comparisons)
    lines = [head + " | test |", "|---" * (len(comparisons) + 3) + "|"]
    for name in summary.task_names:
        cells = []
        for c in comparisons:
            assert c.source.objectives is not None
            cells.append(_cell(c.per_task[name], chosen.objectives[name] - c.source.objectives[name]))
        tests = sorted({d.test for c in comparisons if (d := c.per_task[name]) is not None})
        lines.append(
            f"| {name} | {chosen.objectives[name]:.4f} | " + " | ".join(cells) + f" | {', '.join(tests) or '—'} |"
        )
    means = [_cell(c.mean, c.plain_mean) for c in comparisons]
    tests = sorted({c.mean.test for c in comparisons if c.mean is not None})
    lines.append(
        f"| mean task | {summary.mean_task_score(chosen):.4f} | " + " | ".join(means) + f" | {', '.join(tests) or '—'} |"
    )
    return lines


def chosen_merge_section(summary: RunSummary) -> list[str]:
    """The report's "## The chosen merge" section: the lead sentence, its verdict, the per-source table."""
    lines = ["## The chosen merge", ""]
    chosen = summary.best()
    if chosen is None:
        return lines + [summary.take_home.none_qualifies or "No merge has finished yet.", ""]
    comparisons = [compare_with_source(summary, chosen, s) for s in summary.sources if s.objectives is not None]
    expert = best_expert(summary)
    top = next((c for c in comparisons if expert is not None and c.source.name == expert.name), None)
    lines.append(lead_sentence(summary, chosen, top) + " " + how_chosen(summary))
    if top is not None:
        lines += ["", verdict(top)]
    if not comparisons:
        return lines + [""]
    lines += ["", *comparison_table(summary, chosen, comparisons), ""]
    if all(d is None for c in comparisons for d in c.per_task.values()):
        lines.append(f"Differences without an interval: {NO_OUTCOMES} (it was written before mmmo kept them).")
    else:
        lines.append(
            f"Each cell: trial {chosen.id} minus the source on the documents both were scored on, its 95% CI and "
            "the two-sided p of `test` (McNemar on 0/1 scores, else a paired t-test; the mean row combines the "
            "tasks' intervals). A cell without an interval has no per-document outcomes on one side."
        )
    failed = [s.name for s in summary.sources if s.objectives is None]
    if failed:
        lines.append(f"Not compared (failed to score): {', '.join(failed)}.")
    return lines + [""]
