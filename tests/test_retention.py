"""Retention: keep the newest N runs, never history, latest, protected runs or foreign folders."""

from __future__ import annotations

import json
import os

import pytest

from engine.nightly.history import append_record, write_latest
from engine.nightly.retention import prune_runs, run_directories


def make_run(exp, name, day, results=True, experiment=None, run_id=None):
    run = exp / name
    (run / "models").mkdir(parents=True)
    (run / "manifest.toml").write_text("[experiment]\n")
    (run / "models" / "a.keras").write_bytes(b"x" * 10)
    if results:
        (run / "results.json").write_text(json.dumps({
            "experiment": {"name": experiment or exp.name},
            "run": {"id": run_id or name, "started_at": f"2025-01-{day:02d}T02:00:00Z"}}))
    return run


@pytest.fixture
def exp(tmp_path):
    exp = tmp_path / "baseline"
    # Names sort the other way round from start times: ordering must follow the time.
    for i, day in enumerate([5, 4, 3, 2, 1]):
        make_run(exp, f"run-{chr(ord('a') + i)}", day)  # run-a newest ... run-e oldest
    append_record(exp, {"run_id": "run-a", "status": "ok"})
    write_latest(exp, "run-a")
    (exp / ".lock").write_text("{}")
    (exp / "notes").mkdir()  # a folder the user put there: not a run
    return exp


def names(paths):
    return sorted(p.name for p in paths)


def test_keeps_newest_n_and_never_history_latest_or_foreign(exp):
    deleted = prune_runs(exp, keep_last=2, protect=set())
    assert names(deleted) == ["run-c", "run-d", "run-e"]
    assert names(run_directories(exp)) == ["run-a", "run-b"]
    for kept in ("history.jsonl", "latest", ".lock", "notes"):
        assert (exp / kept).exists()
    assert not [p for p in exp.iterdir() if "trash" in p.name]


def test_keep_last_zero_keeps_everything(exp):
    assert prune_runs(exp, keep_last=0, protect=set()) == []
    assert len(run_directories(exp)) == 5


def test_protected_and_latest_runs_survive_beyond_n(exp):
    write_latest(exp, "run-e")  # latest pointing at the oldest (e.g. a reused run)
    deleted = prune_runs(exp, keep_last=1, protect={"run-c"})
    assert names(deleted) == ["run-b", "run-d"]
    assert names(run_directories(exp)) == ["run-a", "run-c", "run-e"]


def test_only_folders_proven_to_be_runs_of_this_experiment_are_deleted(tmp_path):
    # Retention deletes; a folder it cannot prove is one of this experiment's runs is never touched.
    exp = tmp_path / "exp"
    make_run(exp, "zz-no-results", day=1, results=False)          # only a manifest copy
    make_run(exp, "yy-other-exp", day=1, experiment="other")      # another experiment's run
    make_run(exp, "xx-copied", day=1, run_id="somewhere-else")    # results.json of another folder
    (exp / "xx-broken").mkdir()
    (exp / "xx-broken" / "results.json").write_text("[1, 2]")    # not a results object
    make_run(exp, "run-old", day=2)
    make_run(exp, "run-new", day=9)
    assert [p.name for p in run_directories(exp)] == ["run-old", "run-new"]
    assert names(prune_runs(exp, keep_last=1, protect=set())) == ["run-old"]
    for kept in ("zz-no-results", "yy-other-exp", "xx-copied", "xx-broken", "run-new"):
        assert (exp / kept).is_dir(), kept


def test_experiment_name_given_explicitly(tmp_path):
    exp = tmp_path / "folder"
    make_run(exp, "a", day=1, experiment="nightly")
    make_run(exp, "b", day=2, experiment="nightly")
    assert run_directories(exp) == []  # the folder's name is not the experiment's
    assert names(prune_runs(exp, keep_last=1, protect=set(), experiment="nightly")) == ["a"]


def test_symlinked_run_is_not_followed(tmp_path):
    exp = tmp_path / "exp"
    target = make_run(tmp_path / "elsewhere", "precious", day=1)
    exp.mkdir()
    (exp / "link").symlink_to(target, target_is_directory=True)
    make_run(exp, "run-new", day=2)
    assert [p.name for p in run_directories(exp)] == ["run-new"]
    assert prune_runs(exp, keep_last=1, protect=set()) == []
    assert (exp / "link").is_symlink() and (target / "models" / "a.keras").exists()


def test_leftover_trash_is_removed_and_negative_n_rejected(exp):
    (exp / ".auditrun-trash-run-x" / "models").mkdir(parents=True)
    (exp / ".trash-mine").mkdir()  # a user's hidden folder that only looks like trash
    prune_runs(exp, keep_last=0, protect=set())
    assert not (exp / ".auditrun-trash-run-x").exists()
    assert (exp / ".trash-mine").is_dir()
    with pytest.raises(ValueError):
        prune_runs(exp, keep_last=-1, protect=set())


def test_missing_experiment_dir_is_a_no_op(tmp_path):
    assert prune_runs(tmp_path / "none", keep_last=3, protect=set()) == []


def test_cache_prune_removes_only_image_arrays_unused_for_max_age(tmp_path):
    from engine.nightly.retention import prune_cache

    cache = tmp_path / ".cache"
    cache.mkdir()
    now = 1_800_000_000.0
    old, fresh = cache / "images-old.npy", cache / "images-fresh.npy"
    other = cache / "integrity-abc.sqlite"
    for f, age_days in ((old, 31), (fresh, 29), (other, 400)):
        f.write_bytes(b"x")
        os.utime(f, (now - age_days * 86400, now - age_days * 86400))
    assert prune_cache(cache, 0, now=now) == []  # 0 keeps everything
    assert prune_cache(cache, 30, now=now) == [old]
    assert not old.exists() and fresh.exists() and other.exists()
    assert prune_cache(tmp_path / "missing", 30, now=now) == []
    with pytest.raises(ValueError):
        prune_cache(cache, -1)


def test_loading_a_cached_array_marks_it_used(tmp_path):
    import numpy as np
    from PIL import Image

    from engine.data.discovery import ImageCache, ImageRecord

    img = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(img)
    records = [ImageRecord(path=img, label="glioma", split="train")]
    ImageCache(tmp_path / "c").load(records, 8)
    (array,) = (tmp_path / "c").glob("images-*.npy")
    os.utime(array, (1_000_000_000, 1_000_000_000))
    ImageCache(tmp_path / "c").load(records, 8)  # a new run: read from disk
    assert array.stat().st_mtime > 1_000_000_000 + 86400
