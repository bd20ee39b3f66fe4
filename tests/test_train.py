"""Training-stage helpers: the fine-tuning learning-rate schedule and the manifest keys behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InputError
from engine.manifest import loads
from engine.training.train import learning_rate_schedule


def _lr(schedule, step: int) -> float:
    return float(schedule(step)) if callable(schedule) else float(schedule)


def test_cosine_schedule_warms_up_from_zero_then_decays_to_zero():
    s = learning_rate_schedule(1e-4, steps_per_epoch=10, epochs=3, schedule="cosine", warmup_epochs=0.5)
    assert _lr(s, 0) == pytest.approx(0.0, abs=1e-12)  # no full-size Adam step on a converged head
    assert _lr(s, 2) == pytest.approx(0.4e-4, rel=1e-5)
    assert _lr(s, 5) == pytest.approx(1e-4, rel=1e-5)  # peak at the end of the warm-up
    assert _lr(s, 5) > _lr(s, 15) > _lr(s, 25) > 0
    assert _lr(s, 30) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_is_the_plain_rate():
    assert learning_rate_schedule(3e-5, 10, 3, "constant", warmup_epochs=1) == 3e-5


def _manifest(ft: str) -> str:
    return f"""
[experiment]
name = "x"
[data]
root = "."
[[backbones]]
name = "b"
file = "{__file__}"
[backbones.fine_tune]
{ft}
"""


def test_fine_tune_keys_are_validated_by_name():
    m = loads(_manifest("learning_rate = 3e-5\nepochs = 2\nwarmup_epochs = 0.5"), base=Path("."), check_data=False)
    ft = m.backbones[0].fine_tune
    assert (ft.schedule, ft.warmup_epochs, ft.learning_rate) == ("cosine", 0.5, 3e-5)
    with pytest.raises(InputError, match=r"backbones\[0\]\.fine_tune\.warmup_epochs"):
        loads(_manifest("epochs = 1\nwarmup_epochs = 1"), base=Path("."), check_data=False)
    with pytest.raises(InputError, match=r"backbones\[0\]\.fine_tune\.schedule"):
        loads(_manifest('schedule = "step"'), base=Path("."), check_data=False)
