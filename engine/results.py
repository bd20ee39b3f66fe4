"""Typed run results and their JSON form (``results.json``, the report's only input).

The dataclasses keep machine values; ``to_dict`` is the one serializer the report, history and
gates read. Optional blocks written by later stages (integrity, gradcam, calibration, ...) live in
``extra`` so each stage owns its own block.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.atomic import write_json
from engine.errors import InputError

SCHEMA_VERSION = 1


@dataclass
class WeightsInfo:
    requested: str
    used: str
    note: str


@dataclass
class BackboneResult:
    name: str
    display_name: str
    architecture: str
    source: str
    file: str | None
    input_size: int
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None
    weights: WeightsInfo | None = None
    preprocessing: str = ""
    parameters: dict = field(default_factory=dict)
    fine_tuned_from: str | None = None
    history: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    test: dict | None = None
    timings: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["input_size"] = [self.input_size, self.input_size]
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneResult":
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        size = kwargs.get("input_size", 0)
        kwargs["input_size"] = size[0] if isinstance(size, list) else size
        if kwargs.get("weights"):
            kwargs["weights"] = WeightsInfo(**kwargs["weights"])
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})


def read_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise InputError(f"{str(run_dir)!r} is not a run directory: it has no results.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{str(path)!r} has schema_version {data.get('schema_version')!r}; "
                         f"this auditrun reads version {SCHEMA_VERSION}")
    return data


def write_results(run_dir: Path, data: dict) -> Path:
    return write_json(Path(run_dir) / "results.json", data)
