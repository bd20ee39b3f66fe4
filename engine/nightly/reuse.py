"""Models a run takes over instead of training them: from the run it resumes, or (``reuse =
"if-unchanged"``) from the newest earlier run with the same manifest, data and code."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.evaluation.predictions import validation_file
from engine.nightly.history import find_reusable, read_history
from engine.results import read_results

#: Blocks a later stage of the adopting run computes again (they depend on every backbone of it).
RECOMPUTED_BLOCKS = ("gradcam", "calibration", "uncertainty", "subgroups", "subgroup_gap")


def reusable_run(exp_dir: Path, results: dict, manifest_sha: str) -> str | None:
    """The run id whose models ``results`` (the new run's) may reuse, or None."""
    env = results["environment"]
    current = {"manifest_sha256": manifest_sha, "dataset_fingerprint": results["data"]["fingerprint"],
               "code_version": {"auditrun": env.get("auditrun"), "git_commit": env.get("git_commit")}}
    record = find_reusable(read_history(exp_dir), current)
    if record is None or not (exp_dir / record["run_id"] / "results.json").is_file():
        return None
    return record["run_id"]


def finished_entries(run_dir: Path) -> dict[str, dict]:
    """Backbone entries of ``run_dir`` that finished, by name."""
    return {e["name"]: e for e in read_results(run_dir).get("backbones", []) if e.get("status") == "ok"}


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
