"""Run history per experiment: one JSON line per finished run, a ``latest`` pointer, and trends.

Layout under ``<output_root>/<experiment>/``::

    history.jsonl   one record per finished run, oldest first (never pruned)
    latest          the run id of the newest finished run, one line of text
    <run-id>/       run directories (see engine.nightly.retention for pruning)

Appending uses ``O_APPEND`` and one ``write()`` of the whole line followed by ``fsync``, rather than
rewriting the file through a temporary copy: records already written are never touched again, so no
crash, full disk or lost race can take earlier nights with it, and the cost stays one line per run.
The price is that a crash mid-write can leave a torn last line; :func:`read_history` skips an
undecodable line with a warning, and :func:`append_record` starts a new line when the file does not
end in one, so a torn fragment can never swallow the next record. Writers are serialised by the
experiment lock (engine.nightly.lock); ``latest`` is small and is replaced atomically (tmp + ``os.replace``),
because a text file survives copies and archives where a symlink does not.

Records are typed as ``engine.results.HistoryRecord`` for reading; the functions here take a record
or its decoded JSON alike, and return the JSON forms the pipeline stores (a record, a trend block).

This module is pure Python (json, hashlib, jsonschema, pandas for tables): no TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Sequence

from engine.atomic import fsync_dir, writing, write_text as _write_text
from engine.data.fingerprint import dataset_fingerprint  # noqa: F401 - the history's name for it
from engine.errors import InputError
from engine.results import (CodeVersion, GateCounts, Gates, HistoryBackbone, HistoryHeadline, HistoryRecord, Integrity, Metrics,
                            RunResults, ValidationMetrics, as_history_record, as_run_results, number_problem,
                            schema_problem)
from engine.results.nightly import Headline, InputsChanged, Trend, TrendBackbone, TrendRun

log = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"
LATEST_FILE = "latest"
RECORD_SCHEMA_VERSION = 1

#: Run statuses whose record carries metrics worth comparing against.
COMPARABLE_STATUSES = ("ok", "partial")


# ------------------------------------------------------------------------------------------------
# Fingerprints and records


def leakage_counts(results: RunResults | dict) -> tuple[int, int] | None:
    """(test images with an exact or near twin in training, test images), or None when unknown.

    ``integrity.cross_split_near`` counts exact copies too (issue 4); the test split size comes from
    ``data.counts.test``. None when the integrity block or the counts are absent or there is no test
    image.
    """
    run = as_run_results(results)
    integrity = run.integrity
    if not isinstance(integrity, Integrity) or integrity.cross_split_near is None:
        return None
    near = integrity.cross_split_near
    # older runs wrote the list of near pairs rather than their number
    near = len(near) if isinstance(near, (list, tuple)) else int(near)
    n_test = sum(run.data.split_counts("test").values()) if run.data is not None else 0
    return (near, int(n_test)) if n_test else None


def leakage_fraction(results: RunResults | dict) -> float | None:
    """Fraction of test images with an exact or near twin in training (see leakage_counts)."""
    counts = leakage_counts(results)
    return None if counts is None else counts[0] / counts[1]


def _headline(block: Metrics | None, class_names: Sequence[str]) -> HistoryHeadline | None:
    if not isinstance(block, Metrics) or block.macro_f1 is None:
        return None
    found = {c: block.of_class(c) for c in class_names}
    return HistoryHeadline(n_images=block.n_images, accuracy=block.accuracy, macro_f1=block.macro_f1,
                           recall={c: m.recall if m is not None else None for c, m in found.items()})


def record_from_results(results: RunResults | dict) -> dict:
    """The history record of one run, built from its results (``RunResults`` or results.json's dict).

    Keeps only what trends and gates compare: identity and inputs of the run (manifest hash, dataset
    fingerprint from ``data.fingerprint``, code version), its status, the per-backbone headline
    metrics on the test split and their leakage-free twins (None where absent), the leakage fraction
    and, when the results already carry a ``gates`` block, the PASS/WARN/FAIL counts. Returns the
    JSON object :func:`append_record` writes (``HistoryRecord.from_json`` reads it back).
    """
    run = as_run_results(results)
    if not run.run.id:
        raise ValueError("results has no run.id; cannot record it in the history")
    env, experiment = run.environment, run.experiment
    class_names = run.class_names
    backbones = {}
    for b in run.backbones:
        # a key the entry lacks must not read as its stand-in default (a missing status is not "ok")
        status = b.status if b.has("status") else None
        finished = status == "ok"
        backbones[b.name] = HistoryBackbone(
            display_name=b.display_name if b.has("display_name") else b.name,
            status=status,
            validation_macro_f1=b.validation.macro_f1 if isinstance(b.validation, ValidationMetrics) else None,
            test=_headline(b.test, class_names) if finished else None,
            leakage_free=_headline(b.leakage_free, class_names) if finished else None,
        )
    summary = run.gates.summary if isinstance(run.gates, Gates) else None
    return HistoryRecord(
        schema_version=RECORD_SCHEMA_VERSION,
        run_id=run.run.id,
        experiment=experiment.name if experiment.has("name") else None,
        started_at=run.run.started_at,
        finished_at=run.run.finished_at,
        status=run.run.status if run.run.has("status") else None,
        manifest_sha256=experiment.manifest_sha256,
        dataset_fingerprint=run.data.fingerprint if run.data is not None else None,
        code_version=CodeVersion(auditrun=env.auditrun, git_commit=env.git_commit),
        class_names=class_names,
        best_backbone=_best_name(run),
        leakage_fraction=leakage_fraction(run),
        backbones=backbones,
        gates=summary,
    ).to_json()


def _best_name(run: RunResults) -> str | None:
    best = run.best_backbone
    return best.name if best is not None and best.has("name") else None


def record_metric(record: HistoryRecord | dict | None, backbone: str, metric: str,
                  split: str = "test") -> float | None:
    """``metric`` ("accuracy" | "macro_f1") of ``backbone`` on ``split`` ("test" | "leakage_free")."""
    if not record:
        return None
    return as_history_record(record).metric(backbone, metric, split)


# ------------------------------------------------------------------------------------------------
# Files


def _history_path(experiment_dir: Path) -> Path:
    return Path(experiment_dir) / HISTORY_FILE


def append_record(experiment_dir: Path, record: HistoryRecord | dict) -> Path:
    """Append ``record`` as one JSON line to ``<experiment_dir>/history.jsonl`` and fsync it.

    The caller holds the experiment lock. Returns the history file path.
    """
    typed = as_history_record(record)
    if not typed.run_id:
        raise ValueError("history record needs a run_id")
    experiment_dir = Path(experiment_dir)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    path = _history_path(experiment_dir)
    line = json.dumps(typed.to_json(), ensure_ascii=False, sort_keys=True, allow_nan=False).encode("utf-8") + b"\n"
    created = not path.exists()
    with writing(path):
        _append(path, line)
    if created:
        fsync_dir(experiment_dir)
    return path


def _append(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    # A previous writer died mid-line: isolate its fragment on a line of its own.
                    line = b"\n" + line
        view = memoryview(line)
        while view:  # os.write may write less than asked (signals, quotas)
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(experiment_dir: Path, *, validate: bool = False) -> list[dict]:
    """Records of ``<experiment_dir>/history.jsonl``, oldest first; [] when there is none.

    A line that does not decode (a torn write after a crash) is skipped with a warning. When a run
    id appears twice (a resumed run recorded again) its last record wins, at its last position.

    ``validate=True`` (``auditrun history``) checks every decoded line against the shipped
    history-record schema and raises InputError naming the file, the line and the failing JSON
    path. A torn write can only leave a prefix of a JSON object, which never decodes, so a line that
    decodes but does not fit the schema was written wrong, not torn.
    """
    path = _history_path(Path(experiment_dir))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    by_id: dict[str, dict] = {}
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s line %d is not a complete history record (torn write?); skipped", path, lineno)
            continue
        if validate:
            validate_record(record, f"{str(path)!r} line {lineno}")
        try:
            run_id = record["run_id"]
        except (KeyError, TypeError):
            log.warning("%s line %d is not a complete history record (torn write?); skipped", path, lineno)
            continue
        by_id.pop(run_id, None)  # re-insert so a re-recorded run takes its newest position
        by_id[run_id] = record
    return list(by_id.values())


def validate_record(record, where: str) -> None:
    """Raise InputError unless ``record`` is a history record this auditrun reads.

    ``where`` names the record in the message, e.g. ``'reports/baseline/history.jsonl' line 3``.
    """
    if isinstance(record, dict):
        version = HistoryRecord.from_json(record).schema_version
        if version != RECORD_SCHEMA_VERSION:
            raise InputError(f"{where}: history record has schema_version {version!r}; "
                             f"this auditrun reads version {RECORD_SCHEMA_VERSION}")
    problem = number_problem(record) or schema_problem(record, "history-record")
    if problem:
        raise InputError(f"{where} is not a valid auditrun history record: {problem}")


def write_latest(experiment_dir: Path, run_id: str) -> Path:
    """Point ``<experiment_dir>/latest`` at ``run_id`` (replaced atomically)."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id in (".", ".."):
        raise ValueError(f"invalid run id {run_id!r}")
    path = Path(experiment_dir) / LATEST_FILE
    _write_text(path, run_id + "\n")
    return path


def read_latest(experiment_dir: Path) -> str | None:
    """The run id in ``<experiment_dir>/latest``, or None when there is no pointer yet."""
    try:
        text = (Path(experiment_dir) / LATEST_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


# ------------------------------------------------------------------------------------------------
# Queries


def previous_record(records: Sequence[HistoryRecord | dict],
                    current_run_id: str | None = None) -> HistoryRecord | dict | None:
    """The newest record before ``current_run_id`` that has metrics to compare against.

    Records after the current one (if it is in the list) are ignored; wholly failed runs are
    skipped, so one broken night does not hide a regression from the gates the night after.
    Returns the element of ``records`` itself (a dict stays a dict for the caller that gave dicts).
    """
    typed = [as_history_record(r) for r in records]
    ids = [r.run_id for r in typed]
    end = ids.index(current_run_id) if current_run_id in ids else len(records)
    for i in reversed(range(end)):
        if typed[i].status in COMPARABLE_STATUSES:
            return records[i]
    return None


def inputs_key(record: HistoryRecord | dict) -> tuple:
    """What must match for ``reuse = "if-unchanged"``: manifest hash, data fingerprint, code version."""
    r = as_history_record(record)
    return (r.manifest_sha256, r.dataset_fingerprint, *r.code.key)


def find_reusable(records: Sequence[HistoryRecord | dict],
                  current: HistoryRecord | dict) -> HistoryRecord | dict | None:
    """The newest fully successful record whose inputs equal ``current``'s, or None.

    ``current`` needs only ``manifest_sha256``, ``dataset_fingerprint`` and ``code_version``. A
    missing manifest hash or fingerprint never matches (unknown inputs are not "unchanged").
    Returns the element of ``records`` itself.
    """
    key = inputs_key(current)
    if key[0] is None or key[1] is None:
        return None
    for record in reversed(records):
        typed = as_history_record(record)
        if typed.status == "ok" and inputs_key(typed) == key:
            return record
    return None


# ------------------------------------------------------------------------------------------------
# Tables


def _rows(records: Sequence[HistoryRecord]) -> tuple[list[dict], list[str]]:
    classes: list[str] = []
    for r in records:
        for c in r.class_names or []:
            if c not in classes:
                classes.append(c)
    rows = []
    for r in records:
        g = r.gates if isinstance(r.gates, GateCounts) else GateCounts()
        gate_text = " ".join(f"{n} {k}" for k, n in (("FAIL", g.FAIL), ("WARN", g.WARN), ("PASS", g.PASS)) if n)
        backbones = r.backbones if isinstance(r.backbones, dict) else {}
        for name, b in (backbones.items() if backbones else [(None, HistoryBackbone())]):
            test = b.split("test") or HistoryHeadline()
            free = b.split("leakage_free") or HistoryHeadline()
            row = {
                "run_id": r.run_id,
                "finished_at": r.finished_at,
                "status": r.status,
                "backbone": name,
                "best": name is not None and name == r.best_backbone,
                "backbone_status": b.status,
                "accuracy": test.accuracy,
                "macro_f1": test.macro_f1,
                "lf_accuracy": free.accuracy,
                "lf_macro_f1": free.macro_f1,
            }
            for c in classes:
                row[f"recall_{c}"] = test.recall_of(c)
            row["leakage_fraction"] = r.leakage_fraction
            row["manifest_sha256"] = (r.manifest_sha256 or "")[:12] or None
            row["dataset_fingerprint"] = (r.dataset_fingerprint or "")[:12] or None
            row["gates"] = gate_text or None
            rows.append(row)
    return rows, classes


def history_table(records: Sequence[HistoryRecord | dict], fmt: str = "table") -> str:
    """Render history records: ``"table"`` (fixed-width text), ``"csv"`` or ``"json"``.

    table and csv have one row per (run, backbone) with headline metrics, their leakage-free twins
    (``lf_``), per-class test recall, and short input hashes; csv keeps full precision. json is the
    records themselves, unflattened, so nothing is lost for scripts.
    """
    if fmt == "json":
        return json.dumps([as_history_record(r).to_json() for r in records], indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if fmt not in ("table", "csv"):
        raise ValueError(f"unknown history format {fmt!r}; use table, csv or json")
    import pandas as pd  # lazy: reading/appending history must not pay for pandas

    rows, classes = _rows([as_history_record(r) for r in records])
    columns = ["run_id", "finished_at", "status", "backbone", "best", "backbone_status", "accuracy",
               "macro_f1", "lf_accuracy", "lf_macro_f1", *[f"recall_{c}" for c in classes],
               "leakage_fraction", "manifest_sha256", "dataset_fingerprint", "gates"]
    frame = pd.DataFrame(rows, columns=columns)
    if fmt == "csv":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, lineterminator="\n")
        return buffer.getvalue()
    if frame.empty:
        return "no runs recorded yet\n"
    frame = frame.drop(columns=["manifest_sha256", "dataset_fingerprint"])
    frame["best"] = frame["best"].map({True: "best", False: ""})
    for column in ("backbone", "backbone_status", "status", "finished_at", "gates"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "-")
    text = frame.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}")
    return text + "\n"


# ------------------------------------------------------------------------------------------------
# Trend


def _moved(label: str, before: float, after: float, digits: int) -> str:
    a, b = round(before, digits), round(after, digits)
    if a == b:
        return f"{label} unchanged at {after:.{digits}f}."
    verb = "rose" if b > a else "fell"
    return f"{label} {verb} from {before:.{digits}f} to {after:.{digits}f}."


#: The metrics a trend compares per backbone, each from the history record's test or leakage-free block.
_TREND_METRICS = ("accuracy", "macro_f1", "leakage_free_accuracy", "leakage_free_macro_f1")


def trend(records: Sequence[HistoryRecord | dict], current_run_id: str, last_n: int = 10, digits: int = 2) -> dict:
    """Compare the current run with the previous comparable run and with the last ``last_n`` runs.

    ``records`` must include the current run (pass ``read_history(d) + [record]`` before appending).
    Returns::

        {"current_run_id", "previous_run_id" (None on the first run),
         "runs": [{"run_id", "finished_at"}] (the last N up to and including the current run),
         "backbones": {name: {"display_name", "current": {metric: v} | None, "previous": {metric: v} | None,
                              "delta": {metric: current - previous | None},
                              "series": [macro_f1 per run in "runs", None where absent/failed],
                              "leakage_free_series": [...]}},
         "inputs_changed": {"manifest": bool, "data": bool, "code": bool} | None,
         "sentences": [plain-language lines, e.g. "ResNet50 macro-F1 fell from 0.91 to 0.86."]}

    metrics: accuracy, macro_f1, leakage_free_accuracy, leakage_free_macro_f1. Sentences compare at
    ``digits`` decimals, so a change invisible at that precision reads "unchanged".
    """
    typed = [as_history_record(r) for r in records]
    ids = [r.run_id for r in typed]
    if current_run_id not in ids:
        raise ValueError(f"run {current_run_id!r} is not among the history records given to trend()")
    if last_n < 1:
        raise ValueError("last_n must be at least 1")
    index = ids.index(current_run_id)
    current = typed[index]
    found = previous_record(typed, current_run_id)
    previous = as_history_record(found) if found is not None else None
    window = typed[max(0, index - last_n + 1): index + 1]

    sentences: list[str] = []
    if previous is None:
        sentences.append("This is the first recorded run of this experiment; there is nothing to compare with.")
    backbones = {}
    for name in _trend_backbones(current, previous):
        backbones[name] = _backbone_trend(name, current, previous, window)
        if previous is not None:
            sentences += _backbone_sentences(name, backbones[name], current, digits)
    changed = _inputs_changed(current, previous)
    if changed is not None:
        sentences.append(_inputs_sentence(changed))
    return Trend(
        current_run_id=current_run_id,
        previous_run_id=previous.run_id if previous is not None else None,
        runs=[TrendRun(run_id=r.run_id, finished_at=r.finished_at) for r in window],
        backbones=backbones,
        inputs_changed=changed,
        sentences=sentences,
    ).to_json()


def _trend_backbones(current: HistoryRecord, previous: HistoryRecord | None) -> list[str]:
    """The current run's backbones, then those only the previous run had."""
    names = list(current.backbones or {})
    for name in (previous.backbones or {}) if previous is not None else {}:
        if name not in names:
            names.append(name)
    return names


def _trend_metrics(record: HistoryRecord | None, name: str) -> Headline | None:
    """``_TREND_METRICS`` of backbone ``name`` in ``record``; None when the record lacks the backbone."""
    if record is None or name not in (record.backbones or {}):
        return None
    return Headline(
        accuracy=record.metric(name, "accuracy"),
        macro_f1=record.metric(name, "macro_f1"),
        leakage_free_accuracy=record.metric(name, "accuracy", "leakage_free"),
        leakage_free_macro_f1=record.metric(name, "macro_f1", "leakage_free"),
    )


def _delta(cur: Headline | None, prev: Headline | None) -> Headline:
    def minus(now: float | None, was: float | None) -> float | None:
        return now - was if cur and prev and now is not None and was is not None else None

    cur_, prev_ = cur or Headline(), prev or Headline()
    return Headline(accuracy=minus(cur_.accuracy, prev_.accuracy), macro_f1=minus(cur_.macro_f1, prev_.macro_f1),
                    leakage_free_accuracy=minus(cur_.leakage_free_accuracy, prev_.leakage_free_accuracy),
                    leakage_free_macro_f1=minus(cur_.leakage_free_macro_f1, prev_.leakage_free_macro_f1))


def _backbone_trend(name: str, current: HistoryRecord, previous: HistoryRecord | None,
                    window: Sequence[HistoryRecord]) -> TrendBackbone:
    """One backbone's entry of ``trend()["backbones"]``."""
    cur, prev = _trend_metrics(current, name), _trend_metrics(previous, name)
    entry = current.backbone(name) or (previous.backbone(name) if previous is not None else None)
    return TrendBackbone(
        display_name=entry.display_name if entry is not None and entry.has("display_name") else name,
        current=cur,
        previous=prev,
        delta=_delta(cur, prev),
        series=[r.metric(name, "macro_f1") for r in window],
        leakage_free_series=[r.metric(name, "macro_f1", "leakage_free") for r in window],
    )


def _backbone_sentences(name: str, entry: TrendBackbone, current: HistoryRecord, digits: int) -> list[str]:
    """What happened to one backbone's macro-F1 (and its leakage-free twin) since the previous run."""
    cur, prev = entry.current, entry.previous
    now_f1 = cur.macro_f1 if cur else None
    was_f1 = prev.macro_f1 if prev else None
    if cur is None:
        return [f"{name} was not part of this run (previous macro-F1 {_fmt(was_f1, digits)})."]
    if now_f1 is None:
        listed = current.backbone(name)
        why = "failed" if listed is not None and listed.status == "failed" else "has no test metrics"
        return [f"{name} {why} in this run; its previous macro-F1 was {_fmt(was_f1, digits)}."]
    if was_f1 is None:
        return [f"{name} has no previous result to compare with; macro-F1 is {now_f1:.{digits}f}."]
    sentences = [_moved(f"{name} macro-F1", was_f1, now_f1, digits)]
    lf_now, lf_was = cur.leakage_free_macro_f1, prev.leakage_free_macro_f1
    if lf_now is not None and lf_was is not None:
        sentences.append(_moved(f"{name} leakage-free macro-F1", lf_was, lf_now, digits))
    return sentences


def _inputs_changed(current: HistoryRecord, previous: HistoryRecord | None) -> InputsChanged | None:
    """Which inputs differ from the previous run's; None on the first run."""
    if previous is None:
        return None
    return InputsChanged(
        manifest=current.manifest_sha256 != previous.manifest_sha256,
        data=current.dataset_fingerprint != previous.dataset_fingerprint,
        code=current.code.to_json() != previous.code.to_json(),
    )


def _inputs_sentence(changed: InputsChanged) -> str:
    what = [w for w, flag in (("the manifest", changed.manifest), ("the data", changed.data),
                              ("the code", changed.code)) if flag]
    if what:
        return "Since the previous run " + _join(what) + (" has" if len(what) == 1 else " have") + " changed."
    return "The manifest, data and code are the same as in the previous run."


def _fmt(value: float | None, digits: int) -> str:
    return "unknown" if value is None else f"{value:.{digits}f}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


__all__ = [
    "HISTORY_FILE", "LATEST_FILE", "append_record", "dataset_fingerprint", "find_reusable", "history_table",
    "inputs_key", "leakage_counts", "leakage_fraction", "previous_record", "read_history", "read_latest",
    "record_from_results", "record_metric", "trend", "validate_record", "write_latest",
]
