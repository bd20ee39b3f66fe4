"""engine.interrupts: a signal during TensorFlow work is acted on at a batch boundary, not inside
Keras (an exception from the handler itself once ended a run in a glibc abort, see the module)."""

from __future__ import annotations

import os
import signal
import traceback

import numpy as np
import pytest

from engine import interrupts
from engine.errors import RunInterrupted


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # the handler runs at the next bytecode boundary
        pass


def _raised_in(exc: BaseException) -> str:
    return traceback.extract_tb(exc.__traceback__)[-1].name


def test_outside_a_deferred_region_the_signal_raises_at_once():
    with interrupts.installed():
        with pytest.raises(RunInterrupted) as info:
            _send(signal.SIGTERM)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert _raised_in(info.value) == "handler"


def test_inside_a_deferred_region_the_signal_waits_for_check():
    with interrupts.installed():
        with pytest.raises(RunInterrupted) as info:
            with interrupts.deferred():
                _send(signal.SIGINT)
                assert interrupts.pending() == signal.SIGINT  # recorded, nothing raised yet
                interrupts.check()
                pytest.fail("check() did not raise")
    assert info.value.exit_code == 128 + signal.SIGINT and _raised_in(info.value) == "check"
    assert interrupts.pending() is None


def test_a_second_signal_raises_without_waiting_and_the_region_end_acts_on_a_waiting_one():
    with interrupts.installed():
        with pytest.raises(RunInterrupted) as info:
            with interrupts.deferred():
                _send(signal.SIGTERM)
                _send(signal.SIGTERM)  # the user insists
                pytest.fail("the second signal did not raise")
        assert _raised_in(info.value) == "handler"
        with pytest.raises(RunInterrupted) as info:
            with interrupts.deferred():
                _send(signal.SIGTERM)
        assert _raised_in(info.value) == "check"  # raised as the region ended, not inside it
    assert signal.getsignal(signal.SIGTERM) is not interrupts.handler  # the previous handler is back


def test_a_signal_during_keras_fit_stops_it_between_two_batches():
    import keras

    from engine.training.train import _Progress

    began: list[int] = []

    class Sender(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            began.append(batch)

        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, 64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    with interrupts.installed():
        with pytest.raises(RunInterrupted) as info:
            with interrupts.deferred():
                model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False,
                          callbacks=[Sender(), _Progress("t", 3, 8, None)])
    assert _raised_in(info.value) == "check"
    assert began == [0, 1]  # the batch in flight finished; no further batch began
