"""Hardening (issue 14): paths stay inside the output root, every error is one line with the right exit
code, runs that stop early say so, and the CLI refuses what would lose a user's files.

Most cases stop before any training and run in well under a second; the few that need a finished or
running audit train a tiny CNN for one epoch on 32-px phantoms.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import paths
from engine.cli import main
from engine.errors import INTERNAL_ERROR_EXIT, InputError

from conftest import write_manifest, trains
from test_nightly_e2e import _env, tiny_backbone

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from engine.data.synth import write_dataset

    tmp = tmp_path_factory.mktemp("hardening")
    write_dataset(tmp / "data", per_class=16, size=32, seed=1)
    tiny_backbone(tmp / "tiny.keras")
    return tmp


def manifest(assets: Path, where: Path, *, name: str = "hard", epochs: int = 1, extra: str = "",
             data: Path | None = None, gradcam: bool = False) -> Path:
    return write_manifest(where / f"{abs(hash((name, epochs, extra, gradcam)))}.toml", f"""
[experiment]
name = {json.dumps(name)}
seed = 3
keep_last = 1
[data]
root = "{data or assets / 'data'}"
[training]
epochs = {epochs}
batch_size = 8
[[backbones]]
name = "tiny"
file = "{assets / 'tiny.keras'}"
preprocessing = "unit"
input_size = 32
train_backbone = true
[gradcam]
enabled = {str(gradcam).lower()}
images_per_class = 1
[evaluation]
bootstrap_resamples = 50
[integrity]
shift = false
[report]
formats = ["html"]
{extra}
""")


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, code: int = 2, *needles: str) -> None:
    """One ``auditrun: error`` line on stderr, the expected exit code, no Python traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert isinstance(result.exception, SystemExit) or result.exception is None
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------------
# 1. Paths built from user strings stay inside their parent


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "/tmp/abs", "..\\x", "nul\u0000byte", " padded", ".hidden"])
def test_experiment_name_that_would_leave_the_output_root_is_refused(assets, tmp_path, bad):
    # The reported case: name = ".." with keep_last = 1 deleted a folder beside the output root.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    m = manifest(assets, tmp_path, name=bad)
    before = tree(tmp_path)
    result = invoke(m, "--output-dir", tmp_path / "out", "--quiet")
    assert_clean_error(result, 2, "experiment.name")
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert tree(tmp_path) == before  # nothing written anywhere: not even the output root


@pytest.mark.parametrize("bad", ["..", "../escape", "a/b", ".hidden", ""])
def test_run_id_must_be_one_plain_folder_name(assets, tmp_path, bad):
    result = invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "out", "--run-id", bad, "--quiet")
    assert_clean_error(result, 2, "--run-id")
    assert not (tmp_path / "escape").exists()
    assert not list((tmp_path / "out").glob("*/*/results.json"))


def test_experiment_folder_that_is_a_symlink_elsewhere_is_refused(assets, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "hard").symlink_to(elsewhere, target_is_directory=True)
    result = invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "out", "--quiet")
    assert_clean_error(result, 2, "resolves outside")
    assert list(elsewhere.iterdir()) == []


def test_backbone_and_class_names_are_checked_as_file_names(assets, tmp_path):
    text = manifest(assets, tmp_path).read_text().replace('name = "tiny"', 'name = "../../models"')
    result = invoke(write_manifest(tmp_path / "b.toml", text), "--output-dir", tmp_path / "out")
    assert_clean_error(result, 2, "backbones[0].name")
    text = manifest(assets, tmp_path).read_text().replace("[data]\n", '[data]\nclasses = ["a/b", "c"]\n')
    result = invoke(write_manifest(tmp_path / "c.toml", text), "--output-dir", tmp_path / "out")
    assert_clean_error(result, 2, "data.classes[0]")


def test_child_refuses_links_and_separators(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "link").symlink_to(tmp_path.parent, target_is_directory=True)
    assert paths.child(tmp_path, "inside", "x") == tmp_path / "inside"
    assert paths.child(tmp_path, "new", "x") == tmp_path / "new"  # need not exist yet
    for bad in ("link", "..", "a/b", "/etc", "a\\b", "a\x00b", "a\nb", "a\u2028b", "x" * 200):
        with pytest.raises(InputError):
            paths.child(tmp_path, bad, "name")


# ------------------------------------------------------------------------------------------------
# 2. Unwritable output: exit 2 with the path, never a traceback or exit 1


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux /sys, which no user may write to")
def test_run_into_a_folder_nobody_may_write_exits_2_naming_it(assets, tmp_path):
    result = invoke(manifest(assets, tmp_path), "--output-dir", "/sys/auditrun-test-out", "--quiet")
    assert_clean_error(result, 2, "/sys/auditrun-test-out")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; the /sys test covers this as root")
def test_run_into_a_read_only_folder_exits_2(assets, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = invoke(manifest(assets, tmp_path), "--output-dir", ro, "--quiet")
    finally:
        ro.chmod(0o755)
    assert_clean_error(result, 2, str(ro))


def test_every_command_exits_2_when_a_file_stands_where_a_folder_should_be(assets, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    m = manifest(assets, tmp_path)
    assert_clean_error(invoke(m, "--output-dir", blocker, "--quiet"), 2, "a-file")
    assert_clean_error(invoke("check-data", m, "--output-dir", blocker, "--quiet"), 2, "a-file")
    assert_clean_error(invoke("synth-data", blocker, "--per-class", 2, "--size", 32), 2, "a-file")
    assert_clean_error(invoke("history", blocker), 2, "a-file")
    # render: report.html is a folder, so the report cannot replace it
    fixture = REPO / "tests" / "fixtures" / "run_fixture"
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fixture, run)
    (run / "report.html").mkdir()
    assert_clean_error(invoke("render", run, "--format", "html"), 2, "report.html")
    assert blocker.read_text() == "not a folder"


def test_engine_bug_exits_70_with_traceback_saved_in_the_run(assets, tmp_path, monkeypatch):
    import engine.workflows.run

    def broken(ctx):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(engine.workflows.run, "prepare_data", broken)
    result = invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "out", "--run-id", "r1", "--quiet")
    assert result.exit_code == INTERNAL_ERROR_EXIT not in (0, 1, 2)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "internal error" in result.stderr and "ZeroDivisionError: planted bug" in result.stderr
    run = tmp_path / "out" / "hard" / "r1"
    saved = run / "traceback.txt"
    assert str(saved) in result.stderr
    assert "ZeroDivisionError" in saved.read_text() and "Traceback" in saved.read_text()
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["status"] == "failed" and "planted bug" in results["run"]["error"]
    assert not (tmp_path / "out" / "hard" / ".lock").exists()


def test_file_system_error_inside_a_run_is_recorded_as_such_not_as_a_bug(assets, tmp_path, monkeypatch):
    import engine.workflows.run

    def unwritable(ctx):
        raise PermissionError(13, "Permission denied", str(tmp_path / "somewhere"))

    monkeypatch.setattr(engine.workflows.run, "prepare_data", unwritable)
    result = invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "out", "--run-id", "r1", "--quiet")
    assert_clean_error(result, 2, "somewhere", "Permission denied")
    run = tmp_path / "out" / "hard" / "r1"
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["status"] == "failed" and "Permission denied" in results["run"]["error"]
    assert "internal error" not in results["run"]["error"] and not (run / "traceback.txt").exists()


def test_bug_outside_a_run_saves_its_traceback_and_exits_70(tmp_path, monkeypatch):
    import engine.nightly.history

    def broken(*a, **k):
        raise KeyError("planted")

    (tmp_path / "history.jsonl").write_text("")
    monkeypatch.setattr(engine.nightly.history, "read_history", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    result = invoke("history", tmp_path)
    assert result.exit_code == INTERNAL_ERROR_EXIT
    assert "Traceback" not in result.stderr
    assert list(tmp_path.glob("auditrun-traceback-*.txt"))


# ------------------------------------------------------------------------------------------------
# 3. --junit is checked before training, and a late failure to write it loses nothing else


def test_junit_into_a_missing_folder_is_refused_before_anything_runs(assets, tmp_path):
    result = invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "out", "--junit",
                    tmp_path / "no" / "such" / "gates.xml", "--quiet")
    assert_clean_error(result, 2, "--junit", "does not exist")
    assert not (tmp_path / "out").exists()
    assert_clean_error(invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "out", "--junit", tmp_path),
                       2, "is a directory")


@pytest.fixture(scope="module")
@trains
def finished(assets, tmp_path_factory):
    """One finished tiny run (1 epoch), with a min_accuracy gate at 0 so the summary has a PASS line;
    writing its --junit file fails after the run."""
    import engine.atomic

    tmp = tmp_path_factory.mktemp("finished")
    m = manifest(assets, tmp, extra="[gates]\nmin_accuracy = 0.0\n")
    junit = tmp / "gates.xml"
    real = engine.atomic.write_text

    def failing(path, text):
        if Path(path) == junit:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, text)

    mp = pytest.MonkeyPatch()
    mp.setattr(engine.atomic, "write_text", failing)
    try:
        result = invoke(m, "--output-dir", tmp / "out", "--run-id", "r1", "--junit", junit)
    finally:
        mp.undo()
    return {"manifest": m, "out": tmp / "out", "run": tmp / "out" / "hard" / "r1", "result": result, "junit": junit}


def test_junit_write_failure_after_the_run_still_prints_gates_and_run_dir(finished):
    result = finished["result"]
    assert_clean_error(result, 2, "--junit", "Permission denied", "gates: PASS")
    assert result.stdout.strip().splitlines()[-1] == str(finished["run"])
    assert json.loads((finished["run"] / "results.json").read_text())["run"]["status"] == "ok"
    assert (finished["run"] / "report.html").is_file()


def test_resume_of_a_finished_run_does_nothing_and_exits_0(finished):
    results = finished["run"] / "results.json"
    before = results.read_bytes()
    result = invoke(finished["manifest"], "--resume", finished["run"])
    assert result.exit_code == 0, result.output
    assert "already finished" in result.stderr
    assert result.stdout.strip() == str(finished["run"])
    assert results.read_bytes() == before


def test_evaluate_exits_2_when_its_output_folder_is_a_file(finished, assets):
    blocker = finished["run"] / "external"
    blocker.write_text("not a folder")
    try:
        result = invoke("evaluate", finished["run"], "--data", assets / "data" / "Testing", "--quiet")
    finally:
        blocker.unlink()
    assert_clean_error(result, 2, "external")


# ------------------------------------------------------------------------------------------------
# 4. synth-data never overwrites a user's file


def test_synth_data_refuses_a_non_empty_folder_and_never_overwrites_foreign_files(tmp_path):
    out = tmp_path / "scans"
    real = out / "Training" / "glioma_tumor" / "glioma (2).png"  # a name synth-data writes
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real patient's scan")
    result = invoke("synth-data", out, "--per-class", 2, "--size", 32)
    assert_clean_error(result, 2, "not empty", "--force")
    result = invoke("synth-data", out, "--per-class", 2, "--size", 32, "--force")
    assert_clean_error(result, 2, "glioma (2).png", "not written by auditrun")
    assert real.read_bytes() == b"a real patient's scan"
    assert tree(out) == {"Training", "Training/glioma_tumor", "Training/glioma_tumor/glioma (2).png"}


def test_synth_data_force_rewrites_only_its_own_unchanged_files(tmp_path):
    out = tmp_path / "synth"
    assert invoke("synth-data", out, "--per-class", 2, "--size", 32).exit_code == 0
    first = {p: p.read_bytes() for p in out.rglob("*.png")}
    (out / "notes.txt").write_text("mine")
    assert invoke("synth-data", out, "--per-class", 2, "--size", 32, "--force").exit_code == 0
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == first  # same seed, same files
    assert (out / "notes.txt").read_text() == "mine"
    victim = next(iter(first))
    victim.write_bytes(b"edited by hand")
    result = invoke("synth-data", out, "--per-class", 2, "--size", 32, "--force", "--seed", 9)
    assert_clean_error(result, 2, victim.name)
    assert victim.read_bytes() == b"edited by hand"


# ------------------------------------------------------------------------------------------------
# 6. Runs that stop early are marked, recorded and rendered as such


def test_input_error_after_the_run_folder_exists_marks_the_run_failed(assets, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    shutil.rmtree(data / "Training" / "pituitary_tumor")
    m = manifest(assets, tmp_path, data=data)
    result = invoke(m, "--output-dir", tmp_path / "out", "--run-id", "r1", "--quiet")
    assert_clean_error(result, 2, "no training images")
    run = tmp_path / "out" / "hard" / "r1"
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["status"] == "failed"
    assert "no training images" in results["run"]["error"] and results["run"]["finished_at"]
    history = [json.loads(line) for line in (run.parent / "history.jsonl").read_text().splitlines()]
    assert [(h["run_id"], h["status"]) for h in history] == [("r1", "failed")]
    assert not (run.parent / ".lock").exists()
    assert invoke("render", run, "--format", "html").exit_code == 0
    page = (run / "report.html").read_text()
    assert "This run failed and did not finish" in page and "no training images" in page


def _spawn(args: list, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=REPO, env=_env(),
                                stdout=fh, stderr=subprocess.STDOUT)


def _wait_for(condition, proc, log: Path, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_signal_marks_the_run_interrupted_releases_the_lock_and_names_the_resume_command(
        assets, tmp_path, signum):
    m = manifest(assets, tmp_path, epochs=400)  # long enough to be mid-training when signalled
    run = tmp_path / "out" / "hard" / "r1"
    log = tmp_path / "log.txt"
    proc = _spawn([m, "--output-dir", tmp_path / "out", "--run-id", "r1"], log)
    _wait_for(lambda: "Epoch" in log.read_text() or "epoch" in log.read_text(), proc, log, "training started")
    proc.send_signal(signum)
    rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 128 + signum, text
    assert "Traceback" not in text
    assert f"--resume {run}" in text
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["status"] == "interrupted"
    assert results["run"]["resume_command"] == f"auditrun {m} --resume {run}"
    assert not (run.parent / ".lock").exists()
    history = [json.loads(line) for line in (run.parent / "history.jsonl").read_text().splitlines()]
    assert history[-1]["status"] == "interrupted"
    assert invoke("render", run, "--format", "html").exit_code == 0
    page = (run / "report.html").read_text()
    assert "This run was interrupted" in page and f"--resume {run}" in page


# ------------------------------------------------------------------------------------------------
# 9. A mistyped command is named, not run as a manifest


def test_mistyped_command_suggests_the_right_one(tmp_path):
    result = invoke("chek-data", tmp_path / "x.toml")
    assert result.exit_code == 2
    assert "no such command 'chek-data'; did you mean 'check-data'?" in result.output

def test_a_manifest_named_like_a_command_still_runs_as_a_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("rendr").write_text("not toml [")
    result = invoke("rendr")
    assert result.exit_code == 2 and "not valid TOML" in result.stderr
