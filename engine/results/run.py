"""The root of results.json: ``RunResults``, the one typed tree every stage fills and every reader
(report, gates, history, reuse) reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.results.backbone import BackboneResult
from engine.results.integrity import DataInfo, Integrity
from engine.results.nightly import Comparison, External, Gates, Trend
from engine.results.record import Record, items, optional, record
from engine.results.schema import SCHEMA_VERSION, read_results, validate_results, write_results


@record
class Experiment(Record):
    name: str = ""
    description: str | None = None
    seed: int = 0
    manifest_file: str | None = None
    manifest_sha256: str | None = None


@record
class RunInfo(Record):
    id: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    status: str = "running"  # running | ok | partial | failed | interrupted
    wall_time_s: float | None = None
    resumed: bool = False
    reused_from: str | None = None
    active_s: float | None = optional()
    active_s_before_resume: float | None = optional()
    error: str | None = optional()
    resume_command: str | None = optional()


@record
class Device(Record):
    type: str | None = None
    name: str | None = None
    count: int | None = None
    threads: int | None = None


@record
class TrainingSetup(Record):
    devices: list[Device] = items()
    #: what a block without the key means: one replica, no distribution strategy
    distribute: str | None = "none"
    replicas: int | None = 1
    precision: str | None = None


@record
class Environment(Record):
    python: str | None = None
    platform: str | None = None
    machine: str | None = None
    packages: dict[str, str | None] = items(dict)
    git_commit: str | None = None
    auditrun: str | None = None
    training: TrainingSetup | None = optional()


@record
class BestBackbone(Record):
    name: str = ""
    selected_by: str | None = None


@record
class ChecklistEntry(Record):
    """One item of a reporting checklist (engine.report.checklists): the guideline's number, its
    status (from-run | drafted | author-input | not-applicable), the answer, the report section."""

    item: str = ""
    part: str | None = None
    topic: str | None = None
    status: str = ""
    answer: str = ""
    section: str | None = None
    source: str | None = None


@record
class ChecklistBlock(Record):
    key: str = ""
    title: str | None = None
    citation: str | None = None
    counts: dict[str, int] = items(dict)
    items: list[ChecklistEntry] = items()


@record
class Tracking(Record):
    """Where the audit was logged in an experiment tracker (engine.tracking): the run of the audit and
    one nested run per model, so ``auditrun evaluate`` and ``--resume`` find them again."""

    tracker: str = "mlflow"
    #: the tracking URI without credentials; the embedded store is named relative to the output root
    uri: str | None = None
    embedded: bool = False
    experiment: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    #: model name (as ``backbones[].name``) -> its nested run's id
    runs: dict[str, str] = items(dict)
    #: model name -> the logged model's URI (``models:/...``)
    models: dict[str, str] = items(dict)
    registered_as: str | None = optional()
    #: running (the audit is under way), logged, or failed (a call gave up; ``error`` says which)
    status: str = "running"
    error: str | None = optional()


@record
class RunResults(Record):
    """results.json, typed. ``from_json`` reads a checked document; ``to_json`` is its one serializer."""

    schema_version: int = SCHEMA_VERSION
    experiment: Experiment = items(Experiment)
    run: RunInfo = items(RunInfo)
    environment: Environment = items(Environment)
    backbones: list[BackboneResult] = items()
    best_backbone: BestBackbone | None = None
    timings: dict[str, float | None] = items(dict)
    integrity: Integrity | None = optional()
    data: DataInfo | None = optional()
    comparisons: list[Comparison] | None = optional()
    comparisons_leakage_free: list[Comparison] | None = optional()
    gates: Gates | None = optional()
    trend: Trend | None = optional()
    external: list[External] | None = optional()
    #: the reporting checklists the report filled from this run ([report] checklists)
    checklists: list[ChecklistBlock] | None = optional()
    #: the experiment tracker's runs of this audit ([tracking])
    tracking: Tracking | None = optional()

    @classmethod
    def read(cls, run_dir: Path) -> "RunResults":
        """``run_dir/results.json``, schema-checked (engine.results.read_results), typed."""
        return cls.from_json(read_results(run_dir))

    @classmethod
    def checked(cls, data: dict, where: Path | str = "results.json") -> "RunResults":
        """A results document already in memory, schema-checked, typed."""
        validate_results(data, where)
        return cls.from_json(data)

    def write(self, run_dir: Path, *, in_place: bool = False) -> Path:
        return write_results(run_dir, self.to_json(), in_place=in_place)

    # --------------------------------------------------------------------------------------- views

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names) if self.data is not None else []

    def finished(self) -> list[BackboneResult]:
        return [b for b in self.backbones if b.status == "ok"]

    def backbone(self, name: str) -> BackboneResult | None:
        return next((b for b in self.backbones if b.name == name), None)

    def display_names(self) -> dict[str, str]:
        return {b.name: b.label for b in self.backbones}

    def label_of(self, name: str | None) -> str | None:
        """How the report names backbone ``name``; None when no backbone has that name (a gate of
        the whole run, a comparison or trend entry of a backbone this run no longer has)."""
        found = self.backbone(name) if name is not None else None
        return found.label if found is not None else None


def as_run_results(results: "RunResults | dict[str, Any]") -> RunResults:
    """A reader's input as the typed tree: results.json's dict (already checked) or the tree itself."""
    return results if isinstance(results, RunResults) else RunResults.from_json(results)
