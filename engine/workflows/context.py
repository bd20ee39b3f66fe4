"""What a run keeps between its stages: the manifest, the run directory, the prepared data, the
typed results (``RunResults``) it checkpoints to results.json, and each model's probabilities."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from engine.manifest import Manifest
from engine.results import BackboneResult, Environment, Experiment, RunInfo, RunResults

Echo = Callable[[str], None]

#: Run statuses that --resume leaves alone: the run reached its end (gates, report, history).
FINISHED_STATUSES = ("ok", "partial")
#: Where a run keeps the traceback of an internal error (a bug), beside results.json.
TRACEBACK_FILE = "traceback.txt"


def _quiet(_msg: str) -> None:
    pass


_quiet.quiet = True  # engine.progress.silent reads it: no progress lines without an echo


def quiet_echo() -> Echo:
    return _quiet


def _unchanged(message: str) -> str:
    return message


@dataclass
class RunContext:
    manifest: Manifest
    run_dir: Path
    output_root: Path
    echo: Echo
    now: Callable[[], datetime]
    results: RunResults = field(default_factory=RunResults)
    #: What the data stage gave (engine.data.PreparedData); None before it ran.
    data: object | None = None
    #: Every backbone's typed results, in the order they ran (``results.backbones`` is this list).
    backbones: list[BackboneResult] = field(default_factory=list)
    # per backbone name: arrays the later stages (explain, calibration, comparisons) need
    outputs: dict[str, dict] = field(default_factory=dict)
    #: perf_counter() when this process started the run, and seconds an interrupted run had already
    #: spent; every save records their sum, so a resumed run's wall time counts both parts.
    clock_start: float | None = None
    prior_active_s: float = 0.0
    #: Devices, tf.distribute strategy and precision (engine.training.devices.Setup); set before training.
    training_setup: object | None = None
    #: Turns data paths in a message into neutral references when the data holds patient ids
    #: (engine.data.identity.Redactor); every log line, stored error and raised message passes it.
    redact: Callable[[str], str] = _unchanged
    #: The experiment tracker (engine.tracking.Tracker); None without [tracking].
    tracker: object | None = None

    @property
    def dataset(self):
        return self.data.dataset if self.data is not None else None

    @property
    def cache(self):
        return self.data.cache if self.data is not None else None

    @property
    def leaked_test(self) -> set:
        return self.data.leaked_test if self.data is not None else set()

    def training_scope(self):
        """The distribution strategy's scope: models built and trained in it are replicated."""
        return self.training_setup.scope() if self.training_setup is not None else contextlib.nullcontext()

    def active_s(self) -> float:
        return self.prior_active_s + (time.perf_counter() - self.clock_start if self.clock_start is not None else 0.0)

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    def leakage_free_mask(self):
        """(n_test,) bool, True for test images with no copy in training; None without an integrity audit."""
        return self.data.leakage_free_mask() if self.data is not None else None

    def finished(self) -> list[BackboneResult]:
        return [b for b in self.backbones if b.status == "ok"]

    def save(self, in_place: bool = False) -> None:
        """results.json, serialised from the typed tree (its one serializer, ``RunResults.to_json``)."""
        self.results.run.active_s = round(self.active_s(), 1)
        self.results.backbones = self.backbones
        self.results.write(self.run_dir, in_place=in_place)


@dataclass
class RunOutcome:
    run_dir: Path
    status: str
    gates: list = field(default_factory=list)
    #: True when --resume found the run already finished and did nothing.
    already_finished: bool = False
    #: True for a non-chief multiworker process: it trained in step with the chief and kept nothing.
    worker: bool = False

    @property
    def gate_failed(self) -> bool:
        return any(g.status == "FAIL" for g in self.gates)


def new_run_id(now: datetime | None = None) -> str:
    from datetime import timezone

    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def resume_command(m: Manifest, run_dir: Path) -> str:
    """The exact shell command that continues ``run_dir`` (the manifest as the user named it)."""
    import shlex

    manifest = m.path if m.path is not None else run_dir / "manifest.toml"
    return f"auditrun {shlex.quote(str(manifest))} --resume {shlex.quote(str(run_dir))}"


def new_results(m: Manifest, run_dir: Path, started: datetime, manifest_sha: str, resumed: bool) -> RunResults:
    """The results of a run that has just started."""
    from engine.provenance import environment

    return RunResults(
        experiment=Experiment(name=m.experiment.name, description=m.experiment.description, seed=m.experiment.seed,
                              manifest_file="manifest.toml", manifest_sha256=manifest_sha),
        run=RunInfo(id=run_dir.name, started_at=started.isoformat(timespec="seconds"), resumed=resumed),
        environment=Environment.from_json(environment()))
