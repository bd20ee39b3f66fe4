"""The shipped JSON Schemas of results.json and history.jsonl records (issue 14, item 5).

A results.json that is JSON but not a results document (``[1, 2]``, a missing or wrong-typed key,
an unknown status) must stop `render`, `evaluate` and `history` with exit 2 and one line naming the
file and the failing JSON path, never a traceback. The committed fixture (a real run's shape) and
the records engine.nightly.history writes must validate, or the schema is stricter than the engine.
"""

from __future__ import annotations

import configparser
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from engine.cli import main
from engine.errors import InputError
from engine.nightly.history import RECORD_SCHEMA_VERSION, append_record, read_history, record_from_results
from engine.report import render_report
from engine.results import SCHEMA_VERSION, json_path, load_schema, read_results, validate_results

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "run_fixture"


def fixture_results() -> dict:
    return json.loads((FIXTURE / "results.json").read_text(encoding="utf-8"))


def run_with(tmp_path: Path, results) -> Path:
    """A copy of the fixture run whose results.json is ``results`` (any JSON value)."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return run


def assert_clean_exit_2(result, *needles: str) -> str:
    """Exit 2 through _fail (SystemExit), one error line naming every needle, no traceback."""
    assert result.exit_code == 2, result.output
    # An exception escaping the command is caught by CliRunner with exit code 1, not printed, so
    # the exit code and SystemExit are what prove that no traceback would reach a user.
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("auditrun: error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------
# The shipped files


def test_schemas_are_shipped_in_the_package_and_name_the_code_versions():
    for name, version in (("results", SCHEMA_VERSION), ("history-record", RECORD_SCHEMA_VERSION)):
        resource = resources.files("engine") / "schemas" / f"{name}.schema.json"
        assert resource.is_file(), f"{name}.schema.json is not inside the engine package"
        schema = json.loads(resource.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"urn:auditrun:schema:{name}:{version}"
        assert schema["properties"]["schema_version"] == {"const": version}
        assert load_schema(name) == schema
    # Without package_data an installed (non-editable) auditrun would have no schema to load.
    setup = configparser.ConfigParser()
    setup.read(HERE.parent / "setup.cfg", encoding="utf-8")
    assert "schemas/*.json" in setup["options.package_data"]["engine"].split()
    assert any(r.strip().startswith("jsonschema") for r in setup["options"]["install_requires"].splitlines())


def test_committed_fixture_validates():
    validate_results(fixture_results(), FIXTURE / "results.json")
    assert read_results(FIXTURE)["schema_version"] == 1


def test_fixture_without_optional_blocks_validates():
    """Blocks later stages add are optional: a run killed after its first backbone has none of them."""
    results = fixture_results()
    for key in ("data", "integrity", "comparisons", "gates", "trend", "external"):
        results.pop(key)
    results["run"].update(status="running", finished_at=None, wall_time_s=None)
    results["best_backbone"] = None
    for b in results["backbones"]:
        for key in ("leakage_free", "calibration", "uncertainty", "gradcam"):
            b.pop(key, None)
    validate_results(results, "results.json")


def test_records_the_engine_writes_validate_against_the_history_schema(tmp_path):
    append_record(tmp_path, record_from_results(fixture_results()))
    assert [r["run_id"] for r in read_history(tmp_path, validate=True)] == ["20250301T020000Z"]


def test_run_without_configured_gates_validates(tmp_path):
    """gates_to_dict([]) summarises as status "NONE": every nightly run without [gates] writes it."""
    from engine.nightly.gates import gates_to_dict

    results = fixture_results()
    results["gates"] = gates_to_dict([])
    validate_results(results, "results.json")
    append_record(tmp_path, record_from_results(results))
    assert read_history(tmp_path, validate=True)[0]["gates"]["status"] == "NONE"


# ------------------------------------------------------------------------------------------------
# render: exit 2 with the JSON path


def _missing_backbones(results):
    del results["backbones"]


def _wrong_type(results):
    results["backbones"][0]["input_size"] = "224"


def _bad_enum(results):
    results["backbones"][0]["status"] = "maybe"


def _finished_without_test(results):
    del results["backbones"][1]["test"]


def _finished_with_null_test(results):
    results["backbones"][1]["test"] = None


@pytest.mark.parametrize("break_it, where, what", [
    (_missing_backbones, "at $:", "'backbones' is a required property"),
    (_wrong_type, "at $.backbones[0].input_size:", "'224' is not of type 'array'"),
    (_bad_enum, "at $.backbones[0].status:", "'maybe' is not one of ['ok', 'failed']"),
    (_finished_without_test, "at $.backbones[1]:", "'test' is a required property"),
    (_finished_with_null_test, "at $.backbones[1].test:", "None is not of type 'object'"),
])
def test_render_rejects_invalid_results_with_the_json_path(tmp_path, break_it, where, what):
    results = fixture_results()
    break_it(results)
    run = run_with(tmp_path, results)
    result = CliRunner().invoke(main, ["render", str(run), "--format", "html"])
    assert_clean_exit_2(result, str(run / "results.json"), "is not a valid auditrun results file", where, what)
    assert not (run / "report.html").exists()


def test_render_rejects_json_that_is_not_an_object(tmp_path):
    run = run_with(tmp_path, [1, 2])
    result = CliRunner().invoke(main, ["render", str(run), "--format", "html"])
    assert_clean_exit_2(result, str(run / "results.json"), "at $: [1, 2] is not of type 'object'")


def test_render_rejects_a_binary_file_as_not_json(tmp_path):
    run = run_with(tmp_path, {})
    (run / "results.json").write_bytes(b"\xff\xfe\x00garbage")
    result = CliRunner().invoke(main, ["render", str(run), "--format", "html"])
    assert_clean_exit_2(result, str(run / "results.json"), "is not valid JSON")


def test_other_schema_version_keeps_its_own_message(tmp_path):
    results = fixture_results()
    results["schema_version"] = 2
    run = run_with(tmp_path, results)
    result = CliRunner().invoke(main, ["render", str(run), "--format", "html"])
    assert_clean_exit_2(result, "has schema_version 2; this auditrun reads version 1")


def test_large_offending_value_is_summarised_on_one_line(tmp_path):
    results = fixture_results()
    results["backbones"] = {b["name"]: b for b in results["backbones"]}
    run = run_with(tmp_path, results)
    line = assert_clean_exit_2(CliRunner().invoke(main, ["render", str(run), "--format", "html"]),
                               "at $.backbones: an object with 3 keys is not of type 'array'")
    assert len(line) < 400


def test_report_loader_validates_too(tmp_path):
    """render_report (the pipeline's report stage) reads through the same validating reader."""
    results = fixture_results()
    _bad_enum(results)
    run = run_with(tmp_path, results)
    with pytest.raises(InputError, match=r"at \$\.backbones\[0\]\.status: 'maybe' is not one of"):
        render_report(run, formats=("html",))


def test_json_path_quotes_keys_that_are_not_identifiers():
    assert json_path([]) == "$"
    assert json_path(["backbones", 0, "test", "per_class", "no tumour", "recall"]) == \
        "$.backbones[0].test.per_class['no tumour'].recall"


# ------------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_rejects_invalid_results(tmp_path):
    results = fixture_results()
    _bad_enum(results)
    run = run_with(tmp_path, results)
    (tmp_path / "ext" / "glioma").mkdir(parents=True)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(tmp_path / "ext"), "--quiet"])
    assert_clean_exit_2(result, str(run / "results.json"), "at $.backbones[0].status: 'maybe' is not one of")


def test_evaluate_on_a_run_killed_before_data_discovery_is_a_clear_error(tmp_path):
    results = fixture_results()
    del results["data"]  # valid: the first save of a run comes before data discovery
    run = run_with(tmp_path, results)
    (tmp_path / "ext" / "glioma").mkdir(parents=True)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(tmp_path / "ext"), "--quiet"])
    assert_clean_exit_2(result, str(run / "results.json"), "has no data block")


# ------------------------------------------------------------------------------------------------
# history


def _history_with(tmp_path: Path, second_line: str) -> Path:
    exp = tmp_path / "exp"
    append_record(exp, record_from_results(fixture_results()))
    with open(exp / "history.jsonl", "a", encoding="utf-8") as fh:
        fh.write(second_line + "\n")
    return exp


def _record(**changes) -> str:
    record = record_from_results(fixture_results())
    record["run_id"] = "20250302T020000Z"
    record.update(changes)
    return json.dumps(record)


@pytest.mark.parametrize("line, where, what", [
    ("[1, 2]", "at $:", "[1, 2] is not of type 'object'"),
    (json.dumps({"schema_version": 1, "status": "ok"}), "at $:", "'run_id' is a required property"),
    (_record(status="maybe"), "at $.status:", "'maybe' is not one of ['ok', 'partial', 'failed', 'interrupted']"),
    (_record(backbones=[]), "at $.backbones:", "[] is not of type 'object'"),
])
def test_history_rejects_a_bad_record_naming_file_line_and_json_path(tmp_path, line, where, what):
    exp = _history_with(tmp_path, line)
    result = CliRunner().invoke(main, ["history", str(exp)])
    assert_clean_exit_2(result, f"{str(exp / 'history.jsonl')!r} line 2", "is not a valid auditrun history record",
                        where, what)


def test_history_record_of_another_version_keeps_its_own_message(tmp_path):
    exp = _history_with(tmp_path, _record(schema_version=2))
    result = CliRunner().invoke(main, ["history", str(exp)])
    assert_clean_exit_2(result, "line 2: history record has schema_version 2; this auditrun reads version 1")


def test_history_still_skips_a_torn_last_line(tmp_path):
    exp = _history_with(tmp_path, _record()[:40])  # a crash mid-append leaves a prefix of the line
    result = CliRunner().invoke(main, ["history", str(exp), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "20250301T020000Z" in result.stdout and "20250302T020000Z" not in result.stdout


def test_history_lists_valid_records(tmp_path):
    exp = _history_with(tmp_path, _record(status="ok"))  # the fixture's own run is "partial"
    result = CliRunner().invoke(main, ["history", str(exp), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "20250301T020000Z" in result.stdout and "20250302T020000Z" in result.stdout
