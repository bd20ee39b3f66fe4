"""The nightly sections: the regression gates' verdicts (engine.nightly.gates) and the trend
against earlier runs of the experiment (engine.nightly.history), whose plot the renderer attaches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.report.figures import FigureRecord
from engine.report.values import Metric, as_metric
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


def gates_view(results: dict, display: dict[str, str]) -> GatesView | None:
    block = results.get("gates")
    if block is None:
        return None
    gates = block.get("gates", [])  # the schema's one shape: {"summary": ..., "gates": [...]}
    rows = [GateRow(
        name=str(g.get("name")), backbone=display.get(g.get("backbone"), g.get("backbone") or "whole run"),
        status=str(g.get("status")), value=as_metric(g.get("value"), 0 if g.get("name") in _COUNT_GATES else 3).text,
        threshold=as_metric(g.get("threshold"), 0 if g.get("name") in _COUNT_GATES else 3).text,
        message=str(g.get("message") or ""),
    ) for g in gates]
    if not rows:
        return None
    counts = {s: sum(r.status == s for r in rows) for s in ("FAIL", "WARN", "PASS")}
    status = "FAIL" if counts["FAIL"] else "WARN" if counts["WARN"] else "PASS"
    text = f"{counts['FAIL']} failed, {counts['WARN']} warned, {counts['PASS']} passed"
    return GatesView(status, text, rows)


_TREND_METRICS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
                  ("leakage_free_accuracy", "leakage-free accuracy"), ("leakage_free_macro_f1", "leakage-free macro-F1"))


def trend_view(results: dict, display: dict[str, str]) -> TrendView | None:
    """Accepts engine.nightly.history.trend()'s block (``runs`` + ``backbones``) and the flat
    ``deltas``/``series`` form."""
    block = results.get("trend")
    if not isinstance(block, dict):
        return None
    deltas: list[TrendDelta] = []
    series: dict[str, list[tuple[str, float | None]]] = {}
    if isinstance(block.get("backbones"), dict):
        run_ids = [str(r.get("run_id")) for r in block.get("runs") or []]
        for name, b in block["backbones"].items():
            shown = display.get(name) or b.get("display_name") or name
            values = b.get("series") or []
            series[name] = list(zip(run_ids, [_num(v) for v in values]))
            cur, prev, delta = b.get("current") or {}, b.get("previous") or {}, b.get("delta") or {}
            for key, label in _TREND_METRICS:
                if cur.get(key) is None and prev.get(key) is None:
                    continue
                deltas.append(_delta(shown, label, prev.get(key), cur.get(key), delta.get(key)))
    else:
        for name, metrics in (block.get("deltas") or {}).items():
            shown = display.get(name, name)
            for key, label in _TREND_METRICS:
                m = metrics.get(key)
                if isinstance(m, dict):
                    deltas.append(_delta(shown, label, m.get("previous"), m.get("current"), m.get("delta")))
        for name, points in (block.get("series") or {}).items():
            series[name] = [(str(p.get("run_id")), _num(p.get("macro_f1"))) for p in points]
    return TrendView(block.get("previous_run_id"), [str(s) for s in block.get("sentences") or []], deltas, series)


def _delta(backbone: str, label: str, previous: Any, current: Any, delta: Any) -> TrendDelta:
    d = _num(delta)
    if d is None and _num(previous) is not None and _num(current) is not None:
        d = _num(current) - _num(previous)
    return TrendDelta(backbone, label, as_metric(previous), as_metric(current), "n/a" if d is None else f"{d:+.3f}")
