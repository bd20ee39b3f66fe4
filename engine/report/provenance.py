"""The provenance section: what was run, where and on which data (run, environment, packages,
images per split and class, skipped files, timings) and the manifest copy, so a reader can
reproduce the audit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from engine.report.values import as_metric, backbone_display, count_of, format_duration, listed_items, unreadable_text


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


def _image_counts(data: dict, class_names: Sequence[str]
                  ) -> tuple[list[str], list[tuple[str, list[int], int]], list[int]]:
    """(splits, [(split, images per class, total)], images per class over all splits)."""
    counts = data.get("counts") or {}
    splits = [s for s in _SPLIT_ORDER if s in counts] + [s for s in counts if s not in _SPLIT_ORDER]
    count_rows = []
    for split in splits:
        per = [count_of((counts.get(split) or {}).get(c)) or 0 for c in class_names]
        count_rows.append((split, per, sum(per)))
    totals = [sum(row[1][i] for row in count_rows) for i in range(len(class_names))]
    return splits, count_rows, totals


def _run_rows(results: dict) -> list[tuple[str, str]]:
    run = results.get("run") or {}
    experiment = results.get("experiment") or {}
    return [
        ("Run id", str(run.get("id", "n/a"))),
        ("Status", str(run.get("status", "n/a"))),
        ("Started (UTC)", str(run.get("started_at", "n/a"))),
        ("Finished (UTC)", str(run.get("finished_at", "n/a"))),
        ("Wall time", format_duration(run.get("wall_time_s"))),
        ("Seed", str(experiment.get("seed", "n/a"))),
        ("Results schema version", str(results.get("schema_version", "n/a"))),
    ]


def _environment_rows(env: dict) -> list[tuple[str, str]]:
    return [
        ("auditrun", str(env.get("auditrun") or "n/a")),
        ("Git commit", str(env.get("git_commit") or "not recorded (not run from a git checkout)")),
        ("Python", str(env.get("python") or "n/a")),
        ("Platform", str(env.get("platform") or "n/a")),
    ] + _training_rows(env.get("training"))


def _training_rows(training: dict | None) -> list[tuple[str, str]]:
    """Where training ran; absent in runs from before it was recorded."""
    if not training:
        return []
    devices = ", ".join(f"{d['count']} x {d['type']} ({d['name']})" for d in training.get("devices", []))
    how = f"{training.get('distribute', 'none')}, {training.get('replicas', 1)} replica(s), {training.get('precision')}"
    return [("Training devices", devices or "n/a"), ("Distribution and precision", how)]


def _data_rows(data: dict) -> list[tuple[str, str]]:
    rows = [
        ("Data root", str(data.get("root", "n/a"))),
        ("Layout", str(data.get("layout", "n/a"))),
        ("Validation fraction", as_metric(data.get("validation_fraction"), 2).text),
    ]
    if data.get("fingerprint"):
        rows.append(("Dataset fingerprint (SHA-256)", str(data["fingerprint"])))
    return rows


def _timing_rows(results: dict) -> list[tuple[str, str]]:
    """The run's stage timings that were recorded, then training and evaluation time per backbone."""
    timings = results.get("timings") or {}
    rows = [(label, format_duration(timings.get(key))) for key, label in _RUN_TIMINGS if key in timings]
    for b in results.get("backbones") or []:
        t = b.get("timings") or {}
        if t:
            rows.append((backbone_display(b), f"training {format_duration(t.get('train_s'))}, evaluation "
                                      f"{format_duration(t.get('evaluate_s'))}"))
    return rows


def provenance_view(results: dict, manifest_text: str | None, class_names: Sequence[str]) -> Provenance:
    experiment = results.get("experiment") or {}
    env = results.get("environment") or {}
    data = results.get("data") or {}
    splits, count_rows, totals = _image_counts(data, class_names)
    skipped, skipped_more = listed_items(data.get("skipped"), unreadable_text)
    return Provenance(
        manifest_file=str(experiment.get("manifest_file") or "manifest.toml"),
        manifest_text=manifest_text,
        manifest_sha256=experiment.get("manifest_sha256"),
        seed=experiment.get("seed"),
        run_rows=_run_rows(results),
        environment_rows=_environment_rows(env),
        packages=sorted((str(k), str(v)) for k, v in (env.get("packages") or {}).items()),
        splits=splits,
        class_names=list(class_names),
        counts=count_rows,
        count_totals=totals,
        data_rows=_data_rows(data),
        skipped=skipped,
        skipped_more=skipped_more,
        timing_rows=_timing_rows(results),
    )
