"""The comparisons section: McNemar's exact test between each pair of backbones on the same test
images, with Holm-adjusted p-values when there are several pairs (engine.evaluation.compare)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.evaluation.compare import format_p
from engine.report.values import count_of
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


def comparison_rows(results: dict, display: dict[str, str]) -> list[ComparisonRow]:
    rows = []
    for c in results.get("comparisons") or []:
        p, holm = _num(c.get("p_value")), _num(c.get("p_value_holm"))
        rows.append(ComparisonRow(
            a=display.get(c.get("a"), str(c.get("a"))), b=display.get(c.get("b"), str(c.get("b"))),
            n10=count_of(c.get("n10")), n01=count_of(c.get("n01")),
            p_value=format_p(p, prefix=False),
            p_value_holm=format_p(holm, prefix=False) if holm is not None else None,
            sentence=str(c.get("sentence") or ""),
        ))
    return rows
