"""The provenance section: what was run, where and on which data (run, environment, packages,
images per split and class, skipped files, timings) and the manifest copy, so a reader can
reproduce the audit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from engine.report.values import as_metric, count_of, display_path, format_duration, listed_items, unreadable_text
from engine.results import DataInfo, Environment, RunResults, TrainingSetup


@dataclass(frozen=True)
class Provenance:
    manifest_file: str
    manifest_text: str | None
    manifest_sha256: str | None
    seed: Any
    run_rows: list[tuple[str, str]]
    environment_rows: list[tuple[str, str]]
    packages: list[tuple[str, str]]
    splits: list[str]
    class_names: list[str]
    counts: list[tuple[str, list[int], int]]  # split, per-class counts, total
    count_totals: list[int]
    data_rows: list[tuple[str, str]]
    skipped: list[str]
    skipped_more: int
    timing_rows: list[tuple[str, str]]


#: Splits in reading order; any other split a run recorded follows them.
_SPLIT_ORDER = ("train", "val", "test")
_RUN_TIMINGS = (("data_s", "Data discovery and decoding"), ("integrity_s", "Integrity audit"),
                ("shift_s", "Distribution-shift check (decodes the first backbone's images)"),
                ("total_s", "Whole run"))


def _image_counts(data: DataInfo, class_names: Sequence[str]
                  ) -> tuple[list[str], list[tuple[str, list[int], int]], list[int]]:
    """(splits, [(split, images per class, total)], images per class over all splits)."""
    counts = data.counts or {}
    splits = [s for s in _SPLIT_ORDER if s in counts] + [s for s in counts if s not in _SPLIT_ORDER]
    count_rows = []
    for split in splits:
        per_class = data.split_counts(split)
        per = [count_of(per_class.get(c)) or 0 for c in class_names]
        count_rows.append((split, per, sum(per)))
    totals = [sum(row[1][i] for row in count_rows) for i in range(len(class_names))]
    return splits, count_rows, totals


def _run_rows(results: RunResults) -> list[tuple[str, str]]:
    run, experiment = results.run, results.experiment
    return [
        ("Run id", str(run.id)),
        ("Status", str(run.status)),
        ("Started (UTC)", str(run.started_at)),
        ("Finished (UTC)", str(run.finished_at)),
        ("Wall time", format_duration(run.wall_time_s)),
        ("Seed", str(experiment.seed)),
        ("Results schema version", str(results.schema_version)),
    ] + _tracking_rows(results)


def _tracking_rows(results: RunResults) -> list[tuple[str, str]]:
    """Where the audit is in the experiment tracker, so a reader can open the same numbers there."""
    t = results.tracking
    if t is None or not t.run_id:
        return []
    where = f"MLflow run {t.run_id} in experiment {t.experiment!r} at {t.uri}"
    return [("Experiment tracker", where + ("" if t.status != "failed" else f" (logging failed: {t.error})"))]


def _environment_rows(env: Environment) -> list[tuple[str, str]]:
    return [
        ("auditrun", str(env.auditrun or "n/a")),
        ("Git commit", str(env.git_commit or "not recorded (not run from a git checkout)")),
        ("Python", str(env.python or "n/a")),
        ("Platform", str(env.platform or "n/a")),
    ] + _training_rows(env.training)


def _training_rows(training: TrainingSetup | None) -> list[tuple[str, str]]:
    """Where training ran; absent in runs from before it was recorded."""
    if not training:
        return []
    devices = ", ".join(f"{d.count} x {d.type} ({d.name})" for d in training.devices)
    how = f"{training.distribute}, {training.replicas} replica(s), {training.precision}"
    return [("Training devices", devices or "n/a"), ("Distribution and precision", how)]


def _data_rows(data: DataInfo) -> list[tuple[str, str]]:
    rows = [
        # by name: the machine's absolute path says nothing to a reader (docs/report.md)
        ("Data", display_path(data.root) if data.root is not None else "n/a"),
        ("Layout", str(data.layout if data.layout is not None else "n/a")),
        ("Validation fraction", as_metric(data.validation_fraction, 2).text),
    ]
    if data.fingerprint:
        rows.append(("Dataset fingerprint (SHA-256)", str(data.fingerprint)))
    return rows


def _timing_rows(results: RunResults) -> list[tuple[str, str]]:
    """The run's stage timings that were recorded, then training and evaluation time per backbone."""
    timings = results.timings or {}
    rows = [(label, format_duration(timings[key])) for key, label in _RUN_TIMINGS if key in timings]
    for b in results.backbones:
        t = b.timings or {}
        if t:
            rows.append((b.label, f"training {format_duration(t.get('train_s'))}, evaluation "
                                  f"{format_duration(t.get('evaluate_s'))}"))
    return rows


def provenance_view(results: RunResults, manifest_text: str | None, class_names: Sequence[str]) -> Provenance:
    experiment, env = results.experiment, results.environment
    data = results.data or DataInfo()
    splits, count_rows, totals = _image_counts(data, class_names)
    skipped, skipped_more = listed_items(data.skipped, unreadable_text)
    return Provenance(
        manifest_file=str(experiment.manifest_file or "manifest.toml"),
        manifest_text=manifest_text,
        manifest_sha256=experiment.manifest_sha256,
        seed=experiment.seed,
        run_rows=_run_rows(results),
        environment_rows=_environment_rows(env),
        packages=sorted((str(k), str(v)) for k, v in (env.packages or {}).items()),
        splits=splits,
        class_names=list(class_names),
        counts=count_rows,
        count_totals=totals,
        data_rows=_data_rows(data),
        skipped=skipped,
        skipped_more=skipped_more,
        timing_rows=_timing_rows(results),
    )
