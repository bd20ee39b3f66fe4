"""A backbone's entry of results.json (``backbones[]``): what was trained or imported, how, and
every block the later stages measured on it."""

from __future__ import annotations

from typing import Any

from engine.results.explain import Explanation, Gradcam, Localisation
from engine.results.metrics import Calibration, Metrics, Subgroup, SubgroupGap, Uncertainty, ValidationMetrics
from engine.results.record import Record, items, optional, record

#: How figures and the report name each explanation method of results.json (``explanations[].method``;
#: engine.explain.methods.METHODS). One table for the explain stage and the report, which imports
#: nothing from that stage.
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM", "scorecam": "Score-CAM",
                 "occlusion": "Occlusion"}
#: How gallery captions and colour bars name ``gradcam.method`` (an imported model's gallery may be
#: occlusion sensitivity rather than Grad-CAM).
GALLERY_METHOD_NAMES = {**METHOD_LABELS, "occlusion": "Occlusion sensitivity"}


def method_label(method: object) -> str:
    """How the report names an ``explanations[].method``; an unknown one by itself."""
    return METHOD_LABELS.get(str(method), str(method))


def gallery_method_name(method: str | None) -> str:
    """How captions name a gallery's ``gradcam.method``; a gallery that names none is Grad-CAM."""
    return GALLERY_METHOD_NAMES.get(method or "gradcam", str(method))


#: BackboneResult blocks that results.json holds only when a stage measured them.
OPTIONAL_BLOCKS = ("leakage_free", "calibration", "uncertainty", "gradcam", "explanations", "localisation",
                   "subgroups", "subgroup_gap")


@record(kw_only=False)
class WeightsInfo(Record):
    requested: str | None = None
    used: str | None = None
    note: str | None = None


@record
class Parameters(Record):
    total: int | None = None
    trainable: int | None = None


@record
class TrainingStage(Record):
    """One training stage (the frozen head, then fine-tuning): engine.training.train.StageResult."""

    name: str | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped_early: bool | None = None
    time_s: float | None = None


@record
class Epoch(Record):
    """One row of ``history`` (engine.training.train): a training epoch's losses and accuracies."""

    stage: str | None = "head"
    epoch: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None


@record
class Imported(Record):
    """What an imported ``[[models]]`` entry is (engine.training.imported) and its checks' warnings."""

    format: str | None = None
    file: str | None = None
    preprocess: str | None = None
    scaling: str | None = None
    channels: Any = None
    layout: Any = None
    output: Any = None
    class_order: list[str] = items()
    classes: list[str] | None = None
    training_data: Any = None
    warnings: list[str] = items()


@record
class BackboneResult(Record):
    name: str
    display_name: str | None = None
    architecture: str | None = None
    source: str | None = None
    file: str | None = None
    #: the square input side in pixels; results.json writes ``[side, side]``
    input_size: int = 0
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None
    weights: WeightsInfo | None = None
    preprocessing: str = ""
    parameters: Parameters | dict = items(dict)
    fine_tuned_from: str | None = None
    #: per epoch: stage, epoch, loss, accuracy, val_loss, val_accuracy
    history: list[dict[str, Any]] = items()
    stages: list[TrainingStage] = items()
    validation: ValidationMetrics | dict = items(dict)
    test: Metrics | None = None
    timings: dict[str, float | None] = items(dict)
    artifacts: dict[str, str] = items(dict)
    #: Blocks later stages add, each set by its own stage (None: not measured, and absent from
    #: results.json): the leakage-free twin of ``test`` (evaluation), ``calibration`` and
    #: ``uncertainty`` (statistics), ``gradcam`` and ``explanations`` (explain), ``subgroups`` and
    #: ``subgroup_gap`` (statistics, with ``[subgroups] by``).
    leakage_free: Metrics | None = optional()
    calibration: Calibration | None = optional()
    uncertainty: Uncertainty | None = optional()
    gradcam: Gradcam | None = optional()
    explanations: list[Explanation] | None = optional()
    #: localisation on every annotated test image, one block per [gradcam] method (engine.explain.localise)
    localisation: list[Localisation] | None = optional()
    #: {attribute: [one row per group]}
    subgroups: dict[str, list[Subgroup]] | None = optional()
    subgroup_gap: SubgroupGap | None = optional()
    #: an imported model's description and checks
    imported: Imported | None = optional()
    #: the method an imported model's gallery used (Grad-CAM or occlusion sensitivity)
    explanation_method: str | None = optional()

    @property
    def label(self) -> str:
        return self.display_name or self.name

    def epochs(self) -> list[Epoch]:
        """``history`` typed. The training stage appends plain rows to ``history``, so it stays a list of dicts."""
        return [Epoch.from_json(row) for row in self.history if isinstance(row, dict)]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    # The stages write ``timings`` as a plain dict; these name the three the report reads (None
    # where a hand-made document has no timings object).
    def _seconds(self, key: str) -> float | None:
        return self.timings.get(key) if isinstance(self.timings, dict) else None

    @property
    def train_s(self) -> float | None:
        return self._seconds("train_s")

    @property
    def evaluate_s(self) -> float | None:
        return self._seconds("evaluate_s")

    @property
    def total_s(self) -> float | None:
        return self._seconds("total_s")

    @property
    def input_size_known(self) -> bool:
        """Whether results.json recorded the input size (``input_size`` reads as 0 where it did not)."""
        return "input_size" not in self._absent and isinstance(self.input_size, int)

    @classmethod
    def from_json(cls, data: dict) -> "BackboneResult":
        size = data.get("input_size")
        if isinstance(size, list):
            data = {**data, "input_size": size[0] if size else 0}
        return super().from_json(data)

    def to_json(self) -> dict:
        out = super().to_json()
        if "input_size" in out:
            out["input_size"] = [self.input_size, self.input_size]
        return out

    #: the names the training and evaluation stages use
    to_dict = to_json
    from_dict = from_json


def as_backbone_result(backbone: "BackboneResult | dict[str, Any]") -> BackboneResult:
    """A reader's backbone as the typed entry: a ``backbones[]`` dict of results.json or the entry itself."""
    return backbone if isinstance(backbone, BackboneResult) else BackboneResult.from_json(backbone)
