"""The nightly sections: the regression gates' verdicts (engine.nightly.gates) and the trend
against earlier runs of the experiment (engine.nightly.history), whose plot the renderer attaches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.report.figures import FigureRecord
from engine.report.values import Metric, as_metric
from engine.results import Headline, RunResults, Trend, TrendChange
from engine.results import number as _num


@dataclass(frozen=True)
class GateRow:
    name: str
    backbone: str
    status: str
    value: str
    threshold: str
    message: str


@dataclass(frozen=True)
class GatesView:
    status: str
    counts: str
    rows: list[GateRow]


@dataclass(frozen=True)
class TrendDelta:
    backbone: str
    metric: str
    previous: Metric
    current: Metric
    delta: str


@dataclass
class TrendView:
    previous_run_id: str | None
    sentences: list[str]
    deltas: list[TrendDelta]
    series: dict[str, list[tuple[str, float | None]]]
    figure: FigureRecord | None = None


#: Gates whose value and threshold are counts (of patients), shown as whole numbers.
_COUNT_GATES = ("max_patient_leakage",)


def gates_view(results: RunResults) -> GatesView | None:
    block = results.gates
    if block is None:
        return None
    # the schema's one shape: {"summary": ..., "gates": [...]}
    rows = [GateRow(
        name=str(g.name), backbone=results.label_of(g.backbone) or g.backbone or "whole run",
        status=str(g.status), value=as_metric(g.value, 0 if g.name in _COUNT_GATES else 3).text,
        threshold=as_metric(g.threshold, 0 if g.name in _COUNT_GATES else 3).text,
        message=str(g.message or ""),
    ) for g in block.gates]
    if not rows:
        return None
    counts = {s: sum(r.status == s for r in rows) for s in ("FAIL", "WARN", "PASS")}
    status = "FAIL" if counts["FAIL"] else "WARN" if counts["WARN"] else "PASS"
    text = f"{counts['FAIL']} failed, {counts['WARN']} warned, {counts['PASS']} passed"
    return GatesView(status, text, rows)


#: (how the report names a trend metric, that metric of a Headline or TrendChanges)
_TREND_METRICS = (("accuracy", lambda h: h.accuracy), ("macro-F1", lambda h: h.macro_f1),
                  ("leakage-free accuracy", lambda h: h.leakage_free_accuracy),
                  ("leakage-free macro-F1", lambda h: h.leakage_free_macro_f1))


def trend_view(results: RunResults) -> TrendView | None:
    """Accepts engine.nightly.history.trend()'s block (``runs`` + ``backbones``) and the flat
    ``deltas``/``series`` form."""
    block = results.trend
    if not isinstance(block, Trend):
        return None
    deltas: list[TrendDelta] = []
    series: dict[str, list[tuple[str, float | None]]] = {}
    if block.per_backbone:
        run_ids = [str(r.run_id) for r in block.runs or []]
        for name, b in block.backbones.items():
            shown = results.label_of(name) or b.display_name or name
            series[name] = list(zip(run_ids, [_num(v) for v in b.series or []]))
            cur, prev, delta = b.current or Headline(), b.previous or Headline(), b.delta or Headline()
            for label, metric in _TREND_METRICS:
                if metric(cur) is None and metric(prev) is None:
                    continue
                deltas.append(_delta(shown, label, metric(prev), metric(cur), metric(delta)))
    else:
        for name, changes in (block.deltas or {}).items():
            shown = results.label_of(name) or name
            for label, metric in _TREND_METRICS:
                m = metric(changes)
                if isinstance(m, TrendChange):
                    deltas.append(_delta(shown, label, m.previous, m.current, m.delta))
        for name, points in (block.series or {}).items():
            series[name] = [(str(p.run_id), _num(p.macro_f1)) for p in points]
    return TrendView(block.previous_run_id, [str(s) for s in block.sentences or []], deltas, series)


def _delta(backbone: str, label: str, previous: Any, current: Any, delta: Any) -> TrendDelta:
    d = _num(delta)
    if d is None and _num(previous) is not None and _num(current) is not None:
        d = _num(current) - _num(previous)
    return TrendDelta(backbone, label, as_metric(previous), as_metric(current), "n/a" if d is None else f"{d:+.3f}")
