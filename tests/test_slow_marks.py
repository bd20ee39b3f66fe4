"""The `slow` mark follows fixtures: `-m "not slow"` (the inner loop) runs nothing that trains."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_test_on_a_training_fixture_is_slow_directly_or_through_another_fixture(pytester):
    pytester.makeconftest(f"""
import importlib.util
spec = importlib.util.spec_from_file_location("auditrun_conftest", {str(CONFTEST)!r})
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
trains = real.trains
pytest_collection_modifyitems = real.pytest_collection_modifyitems
pytest_runtest_logreport = real.pytest_runtest_logreport
pytest_terminal_summary = real.pytest_terminal_summary
""")
    pytester.makeini("[pytest]\nmarkers =\n    slow: trains\n")
    pytester.makepyfile(test_mini="""
import time
import pytest
from conftest import trains

@pytest.fixture(scope="module")
@trains
def trained():
    return 1

@pytest.fixture
def derived(trained):
    return trained + 1

def test_direct(trained): pass
def test_through_another(derived): pass
@pytest.mark.slow
def test_by_hand(): pass
def test_plain(): pass
def test_slow_but_unmarked(): time.sleep(5.2)
""")
    fast = pytester.runpytest_subprocess("-m", "not slow", "-q", "-rA")
    fast.assert_outcomes(passed=2, deselected=3)
    assert "test_plain" in fast.stdout.str() and "test_direct" not in fast.stdout.str()
    fast.stdout.fnmatch_lines(["*tests over 5 s not marked slow*", "*test_mini.py::test_slow_but_unmarked*"])
    slow = pytester.runpytest_subprocess("-m", "slow", "-q")
    slow.assert_outcomes(passed=3, deselected=2)
