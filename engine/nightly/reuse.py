"""Models a run takes over instead of training them: from the run it resumes, or (``reuse =
"if-unchanged"``) from the newest earlier run with the same manifest, data and code."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.evaluation.predictions import validation_file
from engine.nightly.history import find_reusable, read_history
from engine.results import CodeVersion, HistoryRecord, RunResults, as_history_record, as_run_results

#: Blocks a later stage of the adopting run computes again (they depend on every backbone of it).
RECOMPUTED_BLOCKS = ("gradcam", "calibration", "uncertainty", "subgroups", "subgroup_gap")


def reusable_run(exp_dir: Path, results: RunResults | dict, manifest_sha: str) -> str | None:
    """The run id whose models ``results`` (the new run's) may reuse, or None."""
    run = as_run_results(results)
    env = run.environment
    current = HistoryRecord(manifest_sha256=manifest_sha,
                            dataset_fingerprint=run.data.fingerprint if run.data is not None else None,
                            code_version=CodeVersion(auditrun=env.auditrun, git_commit=env.git_commit))
    found = find_reusable(read_history(exp_dir), current)
    run_id = as_history_record(found).run_id if found is not None else None
    if run_id is None or not (exp_dir / run_id / "results.json").is_file():
        return None
    return run_id


def finished_entries(run_dir: Path) -> dict[str, dict]:
    """Backbone entries of ``run_dir`` that finished, by name, as results.json holds them (the
    adopting run copies them into its own results)."""
    # an entry without a status did not finish: ``status`` reads "ok" only as a stand-in default
    return {b.name: b.to_json() for b in RunResults.read(run_dir).backbones if b.ok and b.has("status")}


def adopt_entry(entry: dict, source_dir: Path, run_dir: Path) -> dict:
    """Copy a finished entry's files into ``run_dir`` (unless it is the source) and return the entry
    without the blocks the adopting run computes again."""
    if Path(source_dir) != Path(run_dir):
        for rel in list(entry["artifacts"].values()) + [validation_file(entry["artifacts"]["predictions"])]:
            if (source_dir / rel).is_file():
                (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source_dir / rel, run_dir / rel)
    return {k: v for k, v in entry.items() if k not in RECOMPUTED_BLOCKS}


__all__ = ["RECOMPUTED_BLOCKS", "adopt_entry", "finished_entries", "reusable_run"]
