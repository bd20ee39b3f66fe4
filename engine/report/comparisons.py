"""The comparisons section: McNemar's exact test between each pair of backbones on the same test
images, with Holm-adjusted p-values when there are several pairs (engine.evaluation.compare)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.evaluation.compare import format_p
from engine.report.values import count_of
from engine.results import RunResults
from engine.results import number as _num


@dataclass(frozen=True)
class ComparisonRow:
    a: str
    b: str
    n10: int | None
    n01: int | None
    p_value: str
    p_value_holm: str | None
    sentence: str


def comparison_rows(results: RunResults) -> list[ComparisonRow]:
    rows = []
    for c in results.comparisons or []:
        p, holm = _num(c.p_value), _num(c.p_value_holm)
        rows.append(ComparisonRow(
            a=results.label_of(c.a) or str(c.a), b=results.label_of(c.b) or str(c.b),
            n10=count_of(c.n10), n01=count_of(c.n01),
            p_value=format_p(p, prefix=False),
            p_value_holm=format_p(holm, prefix=False) if holm is not None else None,
            sentence=str(c.sentence or ""),
        ))
    return rows
