"""Gates and explanation methods come from registries (issue 27): registering one is all it takes
for the manifest to accept its name and for the stage to run it, and every "use one of" list the
manifest prints is the registry's. No TensorFlow."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from engine import manifest
from engine.errors import InputError
from engine.explain import methods
from engine.nightly import gates
from engine.registry import Registry

BASE = """
[[backbones]]
name = "EfficientNetB0"
"""

RESULTS = {"backbones": [{"name": "B", "status": "ok", "test": {"accuracy": 0.9, "macro_f1": 0.9}}],
           "best_backbone": {"name": "B"}, "integrity": {"cross_split_near": 0, "n_test": 10}}


def _loads(body: str) -> manifest.Manifest:
    return manifest.loads(body + BASE, base=Path("."), check_data=False)


def _error(body: str) -> str:
    with pytest.raises(InputError) as err:
        _loads(body)
    return str(err.value)


@pytest.fixture
def dummy_gate():
    """A run-level gate that always WARNs, registered for one test only."""
    calls = []

    @gates.register_gate("dummy_gate", scope="run")
    def _dummy(inp: gates.GateInput, config: gates.GatesConfig) -> gates.GateResult:
        calls.append(inp.target)
        status = "WARN" if config.is_warn_only("dummy_gate") else "FAIL"
        return gates.GateResult("dummy_gate", None, status, 1.0, 0.0, "dummy")

    yield calls
    gates.GATES.remove("dummy_gate")


@pytest.fixture
def dummy_method():
    """An explanation method whose maps are the images' first channel, registered for one test only."""
    made = []

    @methods.register_method("dummy_method")
    def _dummy(layer, batch_size, **options):
        made.append((layer, batch_size, options))
        return lambda model, images, cls: np.asarray(images, np.float32)[..., 0] / 255.0

    yield made
    methods.METHODS.remove("dummy_method")


def test_a_registered_gate_is_accepted_by_the_manifest_and_evaluated(dummy_gate):
    m = _loads('[gates]\nwarn_only = ["dummy_gate"]\nmin_accuracy = 0.5\nmax_leakage_fraction = 0.5\n')
    out = gates.evaluate_gates(RESULTS, m.gates, None)
    # run-level gates follow the per-backbone ones, in registration order: after the built-in leakage gate
    assert [g.label for g in out] == ["all_backbones_finished", "min_accuracy[B]", "max_leakage_fraction",
                                      "dummy_gate"]
    assert out[-1] == gates.GateResult("dummy_gate", None, "WARN", 1.0, 0.0, "dummy")  # warn_only reached it
    assert dummy_gate == [None]  # evaluated once, with no backbone target


def test_a_gate_is_refused_once_it_is_unregistered():
    body = '[gates]\nwarn_only = ["dummy_gate"]\n'
    gates.register_gate("dummy_gate", scope="run")(lambda inp, config: None)
    try:
        assert _loads(body).gates.warn_only == ["dummy_gate"]
    finally:
        gates.GATES.remove("dummy_gate")
    assert "'dummy_gate' is not a gate" in _error(body)
    assert "dummy_gate" not in gates.GATES


def test_a_registered_method_is_accepted_by_the_manifest_and_explains(dummy_method):
    m = _loads('[gradcam]\nmethod = ["gradcam", "dummy_method"]\n')
    assert m.gradcam.methods == ["gradcam", "dummy_method"]
    images = np.full((2, 8, 8, 3), 51.0, np.float32)
    maps = methods.explain_maps(None, images, [0, 1], method="dummy_method", layer="top", batch_size=4)
    assert maps.shape == (2, 8, 8) and np.allclose(maps, 0.2)
    assert dummy_method == [("top", 4, {})]
    assert not methods.uses_target_layer("dummy_method") and methods.uses_target_layer("gradcam")


def test_the_manifests_method_list_is_the_registrys(dummy_method):
    message = _error('[gradcam]\nmethod = "lime"\n')
    listed = re.search(r"use one of (.*)$", message).group(1).split(", ")
    assert listed == [repr(n) for n in methods.METHODS] and "'dummy_method'" in listed
    assert f"choose one of {', '.join(methods.METHODS)}" in _explainer_error("lime")


def _explainer_error(name: str) -> str:
    with pytest.raises(InputError) as err:
        methods.explainer(name)
    return str(err.value)


def test_the_manifests_gate_list_is_the_registrys(dummy_gate):
    message = _error('[gates]\nwarn_only = ["min_acc"]\n')
    listed, per_class = re.search(r"use one of (.*) or (\S+)$", message).groups()
    assert listed.split(", ") == list(gates.GATES) and "dummy_gate" in listed.split(", ")
    assert per_class == "min_recall.<class>"


def test_the_gate_message_lists_the_built_in_gates_as_before():
    # The order of GATES is the order warn_only messages have always listed the gates in.
    assert list(gates.GATES) == ["all_backbones_finished", "min_accuracy", "min_macro_f1", "min_recall",
                                 "max_macro_f1_drop", "max_leakage_fraction", "max_subgroup_gap",
                                 "max_patient_leakage", "min_pointing_game", "explanation_sanity"]
    assert list(gates.GATE_FAMILIES) == list(gates.GATES)


def test_the_manifests_subgroup_list_is_the_evaluation_stages():
    from engine.evaluation.subgroups import SUBGROUP_ATTRIBUTES

    message = _error('[subgroups]\nby = ["ward"]\n')
    assert re.search(r"use one of (.*)$", message).group(1).split(", ") == list(SUBGROUP_ATTRIBUTES)


def test_a_registry_refuses_a_second_entry_under_one_name():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        reg.add("a", 2)
    assert list(reg) == ["a"] and reg["a"] == 1
    assert reg.remove("a") == 1 and "a" not in reg
