"""Typed history.jsonl records (schema engine/schemas/history-record.schema.json): one line per
finished run, written by engine.nightly.history.record_from_results and read by trends, gates and
reuse. The same ``Record`` rules as results.json keep a round trip exact."""

from __future__ import annotations

import math
from typing import Any

from engine.results.nightly import GateCounts
from engine.results.record import Record, items, record


@record
class CodeVersion(Record):
    auditrun: str | None = None
    git_commit: str | None = None

    @property
    def key(self) -> tuple[str | None, str | None]:
        return self.auditrun, self.git_commit


@record
class HistoryHeadline(Record):
    """A backbone's headline numbers on one split (``test`` or ``leakage_free``)."""

    n_images: int | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    recall: dict[str, float | None] = items(dict)

    def metric(self, name: str) -> float | None:
        """``accuracy`` or ``macro_f1`` as a float; None where unmeasured (NaN included)."""
        value = {"accuracy": self.accuracy, "macro_f1": self.macro_f1}[name]
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    def recall_of(self, cls: str) -> float | None:
        return self.recall.get(cls) if isinstance(self.recall, dict) else None


@record
class HistoryBackbone(Record):
    display_name: str | None = None
    status: str | None = None
    validation_macro_f1: float | None = None
    test: HistoryHeadline | None = None
    leakage_free: HistoryHeadline | None = None

    def split(self, split: str) -> HistoryHeadline | None:
        """The ``test`` or ``leakage_free`` headline (None when absent or of another shape)."""
        block = {"test": self.test, "leakage_free": self.leakage_free}[split]
        return block if isinstance(block, HistoryHeadline) else None


@record
class HistoryRecord(Record):
    """One history.jsonl line. Keys are declared in the order record_from_results writes them."""

    schema_version: int | None = None
    run_id: str | None = None
    experiment: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    status: str | None = None
    manifest_sha256: str | None = None
    dataset_fingerprint: str | None = None
    code_version: CodeVersion | None = None
    class_names: list[str] = items()
    best_backbone: str | None = None
    leakage_fraction: float | None = None
    backbones: dict[str, HistoryBackbone] = items(dict)
    gates: GateCounts | None = None

    def backbone(self, name: str | None) -> HistoryBackbone | None:
        found = self.backbones.get(name) if isinstance(self.backbones, dict) else None
        return found if isinstance(found, HistoryBackbone) else None

    @property
    def code(self) -> CodeVersion:
        """``code_version``, an empty one when the record lacks it (older or hand-made records)."""
        return self.code_version if isinstance(self.code_version, CodeVersion) else CodeVersion()

    def metric(self, backbone: str | None, metric: str, split: str = "test") -> float | None:
        """``metric`` ("accuracy" | "macro_f1") of ``backbone`` on ``split`` ("test" | "leakage_free")."""
        entry = self.backbone(backbone)
        block = entry.split(split) if entry is not None else None
        return block.metric(metric) if block is not None else None


def as_history_record(record: "HistoryRecord | dict[str, Any]") -> HistoryRecord:
    """A history record as the typed record: a decoded history.jsonl line or the record itself."""
    return record if isinstance(record, HistoryRecord) else HistoryRecord.from_json(record)
