"""Typed blocks comparing models and runs: McNemar ``comparisons``, ``gates``, ``trend`` and the
``external`` validations of ``auditrun evaluate``."""

from __future__ import annotations

from engine.results.explain import Explanation, Localisation, PointingGame
from engine.results.metrics import ClassMetrics
from engine.results.record import Record, items, optional, record


@record
class Comparison(Record):
    """One McNemar test between two backbones (engine.evaluation.compare)."""

    a: str | None = None
    b: str | None = None
    n_images: int | None = None
    n11: int | None = None
    n10: int | None = None
    n01: int | None = None
    n00: int | None = None
    discordant: int | None = None
    method: str | None = None
    p_value: float | None = None
    p_value_holm: float | None = None
    n_pairs: int | None = None
    sentence: str | None = None


@record
class GateEntry(Record):
    name: str = ""
    backbone: str | None = None
    status: str = ""
    value: float | None = None
    threshold: float | None = None
    message: str = ""


@record
class GateCounts(Record):
    PASS: int = 0
    WARN: int = 0
    FAIL: int = 0
    status: str | None = None


@record
class Gates(Record):
    summary: GateCounts | None = None
    gates: list[GateEntry] = items()


@record
class TrendRun(Record):
    run_id: str | None = None
    finished_at: str | None = None


@record
class Headline(Record):
    accuracy: float | None = None
    macro_f1: float | None = None
    leakage_free_accuracy: float | None = None
    leakage_free_macro_f1: float | None = None


@record
class TrendBackbone(Record):
    display_name: str | None = None
    current: Headline | None = None
    previous: Headline | None = None
    delta: Headline | None = None
    series: list[float | None] = items()
    leakage_free_series: list[float | None] = items()


@record
class InputsChanged(Record):
    manifest: bool = False
    data: bool = False
    code: bool = False


@record
class TrendChange(Record):
    """One metric of the flat trend form: its previous and current value and their difference."""

    previous: float | None = None
    current: float | None = None
    delta: float | None = None


@record
class TrendChanges(Record):
    """A backbone's metrics in the flat trend form (the keys of ``Headline``)."""

    accuracy: TrendChange | None = None
    macro_f1: TrendChange | None = None
    leakage_free_accuracy: TrendChange | None = None
    leakage_free_macro_f1: TrendChange | None = None


@record
class TrendPoint(Record):
    run_id: str | None = None
    macro_f1: float | None = None


@record
class Trend(Record):
    current_run_id: str | None = None
    previous_run_id: str | None = None
    runs: list[TrendRun] = items()
    backbones: dict[str, TrendBackbone] = items(dict)
    inputs_changed: InputsChanged | None = None
    sentences: list[str] = items()
    #: the flat form some trend blocks hold instead of ``runs`` + ``backbones``:
    #: {backbone: changes} and {backbone: [one point per run]}; optional, so a Trend that a stage
    #: builds never writes them
    deltas: dict[str, TrendChanges] | None = optional()
    series: dict[str, list[TrendPoint]] | None = optional()

    @property
    def per_backbone(self) -> bool:
        """Whether the block has engine.nightly.history.trend()'s form rather than the flat one."""
        return isinstance(self.backbones, dict) and bool(self.backbones)


@record
class ExternalBackbone(Record):
    name: str = ""
    display_name: str | None = None
    n_images: int | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    per_class: dict[str, ClassMetrics] = items(dict)
    confusion_matrix: list[list[int]] = items()
    #: older runs stored the bare hit rate
    pointing_game: PointingGame | float | None = None
    #: one block per method over the folder's annotated images (engine.explain.localise)
    localisation: list[Localisation] = items()
    explanations: list[Explanation] = items()


@record
class External(Record):
    """One ``auditrun evaluate`` folder (engine.evaluation.external)."""

    data: str = ""
    evaluated_at: str | None = None
    counts: dict[str, int] = items(dict)
    backbones: list[ExternalBackbone] = items()
