"""Retention of old run directories: keep the newest N runs of an experiment, never the history.

A run directory is one retention can prove is a run of this experiment: a direct, non-hidden,
non-symlink subfolder of the experiment directory whose ``results.json`` names this experiment
(``experiment.name``) and the folder itself (``run.id``). Anything else (a folder a user put
there, a folder that merely holds a ``manifest.toml``, another experiment's run, the history file,
the lock, the ``latest`` pointer) is never a candidate: retention deletes, so it must not guess.
Runs are ordered by ``run.started_at``, ties broken by name.

Deletion first renames the run to a hidden ``.auditrun-trash-<name>`` folder, then removes it: a crash
mid-delete leaves no half run that looks whole to ``auditrun history`` or ``--resume``; leftover
trash from such a crash is removed on the next prune. Call it while holding the experiment lock.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import datetime
from pathlib import Path

from engine.nightly.history import read_latest

log = logging.getLogger(__name__)

#: Specific enough that no folder a user made is mistaken for our half-deleted run.
_TRASH_PREFIX = ".auditrun-trash-"


def run_directories(experiment_dir: Path, experiment: str | None = None) -> list[Path]:
    """Run directories of ``experiment`` (default: the folder's name), oldest first.

    See the module docstring for what counts as a run.
    """
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return []
    experiment = experiment_dir.name if experiment is None else experiment
    started = {}
    for p in experiment_dir.iterdir():
        if p.name.startswith(".") or p.is_symlink() or not p.is_dir():
            continue
        stamp = _run_started(p, experiment)
        if stamp is not None:
            started[p] = stamp
    return sorted(started, key=lambda p: (started[p], p.name))


def _run_started(run_dir: Path, experiment: str) -> float | None:
    """The run's start time when ``run_dir/results.json`` proves it a run of ``experiment``, else None."""
    path = run_dir / "results.json"
    try:
        if path.is_symlink():
            return None
        results = json.loads(path.read_text(encoding="utf-8"))
        if results["experiment"]["name"] != experiment or results["run"]["id"] != run_dir.name:
            return None
        stamp = results["run"]["started_at"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def prune_runs(experiment_dir: Path, keep_last: int, protect: set[str] | frozenset[str] = frozenset(),
               experiment: str | None = None) -> list[Path]:
    """Delete the oldest run directories beyond the newest ``keep_last``; return what was deleted.

    ``keep_last=0`` keeps everything. Never deleted: the run named in ``latest``, run names in
    ``protect`` (the current run, a run whose models a reused run points at), and anything that is
    not a run directory of ``experiment`` (default: the folder's name). The newest N runs are kept
    whatever they are; protected runs older than those are kept in addition.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    experiment_dir = Path(experiment_dir)
    _empty_trash(experiment_dir)
    if keep_last == 0:
        return []
    keep = set(protect)
    latest = read_latest(experiment_dir)
    if latest:
        keep.add(latest)
    runs = run_directories(experiment_dir, experiment)
    doomed = [p for p in runs[:max(0, len(runs) - keep_last)] if p.name not in keep]
    deleted = []
    for run_dir in doomed:
        trash = run_dir.with_name(_TRASH_PREFIX + run_dir.name)
        try:
            run_dir.rename(trash)
            shutil.rmtree(trash)
        except OSError as exc:
            log.warning("could not delete old run %s: %s", run_dir, exc)
            continue
        log.info("retention: deleted run %s (keep_last=%d)", run_dir.name, keep_last)
        deleted.append(run_dir)
    return deleted


def _empty_trash(experiment_dir: Path) -> None:
    if not experiment_dir.is_dir():
        return
    for p in experiment_dir.iterdir():
        if p.name.startswith(_TRASH_PREFIX) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def prune_cache(cache_dir: Path, max_age_days: int, now: float | None = None) -> list[Path]:
    """Delete decoded-image arrays (``images-*.npy``, and leftovers of interrupted writes) that no run
    has used for ``max_age_days``; return what was deleted. 0 keeps everything.

    "Used" is the file's mtime: ``ImageCache`` touches an array whenever a run loads it. Other
    caches (the integrity fingerprints, one small file per dataset) are left alone.
    """
    if max_age_days < 0:
        raise ValueError(f"max_age_days must be >= 0, got {max_age_days}")
    cache_dir = Path(cache_dir)
    if max_age_days == 0 or not cache_dir.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    deleted = []
    from engine.data.discovery import ImageCache

    for path in sorted(cache_dir.glob(ImageCache.FILE_GLOB)):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
                deleted.append(path)
        except OSError as exc:
            log.warning("could not delete cached images %s: %s", path, exc)
    return deleted


__all__ = ["prune_cache", "prune_runs", "run_directories"]
