"""Shared fixtures: synthetic data the project generates itself, and the optional real assets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# An exported AUDITRUN_DATA_ROOT (the README suggests one) would point every test manifest, and the audits
# that tests start in subprocesses, at that dataset instead of the test's own phantoms. Tests of the
# variable set it themselves (monkeypatch).
os.environ.pop("AUDITRUN_DATA_ROOT", None)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: AUDITRUN_TEST_LITE0 overrides the Lite0 path; a missing path runs the tests' no-Lite0 branches
#: (the end-to-end audit then trains a tiny CNN from scratch instead; docs/testing.md).
LITE0 = Path(os.environ.get("AUDITRUN_TEST_LITE0") or SHARED / "weights" / "efficientnet_lite0_imagenet.keras")
SARTAJ = SHARED / "datasets" / "sartaj-brain-tumor-mri"

needs_lite0 = pytest.mark.skipif(not LITE0.is_file(), reason=f"offline Lite0 backbone not found at {LITE0}")
needs_sartaj = pytest.mark.skipif(not SARTAJ.is_dir(), reason=f"Sartaj MRI dataset not found at {SARTAJ}")
needs_poppler = pytest.mark.skipif(shutil.which("pdfinfo") is None or shutil.which("pdftotext") is None,
                                   reason="poppler-utils (pdfinfo, pdftotext) not installed")


# ------------------------------------------------------------------------------------------------
# `slow`: what trains a model or runs an audit. `pytest -m "not slow"` is the inner loop
# (docs/testing.md). A test is slow when it is marked by hand, or when it uses a fixture decorated
# with `@trains` (directly or through another fixture), so a new test on a trained fixture is slow
# without anyone remembering to say so; `-m "not slow"` then lists the tests it ran that still
# took over FAST_LIMIT_S, to be marked.

FAST_LIMIT_S = 5.0


def trains(fixture_function):
    """Under ``@pytest.fixture``: every test that uses this fixture is marked ``slow``."""
    fixture_function.auditrun_trains = True
    return fixture_function


def _uses_training_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(getattr(d.func, "auditrun_trains", False) for defs in info.name2fixturedefs.values() for d in defs)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") is None and _uses_training_fixture(item):
            item.add_marker(pytest.mark.slow)


_slow_unmarked: list[tuple[float, str]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.duration > FAST_LIMIT_S and "slow" not in report.keywords:
        _slow_unmarked.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _slow_unmarked and "not slow" in (config.getoption("markexpr") or ""):
        terminalreporter.section(f"tests over {FAST_LIMIT_S:g} s not marked slow")
        for duration, nodeid in sorted(_slow_unmarked, reverse=True):
            terminalreporter.write_line(f"{duration:6.1f} s  {nodeid}")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small Kaggle-layout phantom dataset (60 per class, 64 px), written once per session."""
    from engine.data.synth import write_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, per_class=60, size=64, seed=3)
    return root


def write_manifest(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def shown_names(run_dir: Path, patients: dict[str, str] | None = None) -> dict[str, str]:
    """The name a run's artefacts give each DICOM file of its data root -> the file's path relative
    to the root. With patient ids in the data that is the neutral reference (the experiment's key in
    ``<output root>/.keys``), recomputed here from the header and the path as docs/data.md says.
    ``patients``: relative path -> raw patient id, for data whose ids come from a labels CSV."""
    import json

    from engine.data.identity import experiment_pseudonymizer, file_reference
    from engine.data.readers import read_metadata

    results = json.loads((Path(run_dir) / "results.json").read_text())
    root = Path(results["data"]["root"])
    pseudonym = experiment_pseudonymizer(Path(run_dir).parent.parent, results["experiment"]["name"])
    out = {}
    files = sorted(root / rel for rel in patients) if patients is not None else sorted(root.rglob("*.dcm"))
    for f in files:
        rel = f.relative_to(root).as_posix()
        patient_id = patients[rel] if patients is not None else read_metadata(f).patient_id
        out[file_reference(rel, pseudonym(patient_id) if patient_id else None, pseudonym)] = rel
    return out


def as_path(name: str, names: dict[str, str]) -> str:
    """``name`` as an artefact shows it (a reference, maybe with `` [frame k]``) -> the relative path,
    with the same frame suffix."""
    ref, sep, frame = name.partition(" [")
    return names.get(ref, ref) + sep + frame


def assert_reads_back_unchanged(document: dict):
    """The typed tree (engine.results.RunResults) holds ``document`` losslessly, so the report and
    nightly can read it typed; returns the tree."""
    from engine.results import RunResults

    typed = RunResults.from_json(document)
    assert typed.to_json() == document
    return typed
