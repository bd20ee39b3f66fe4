"""Each backbone gets its own keras.applications preprocessing, baked into the saved model."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from engine.training.backbones import REGISTRY, preprocess_layer


@pytest.mark.parametrize("name", ["VGG16", "ResNet50", "InceptionV3", "EfficientNetB0", "MobileNetV3Small",
                                  "DenseNet121", "MobileNetV2"])
def test_preprocess_layer_matches_keras_applications(name):
    spec = REGISTRY[name]
    module = importlib.import_module(f"keras.applications.{spec.module}")
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = np.asarray(module.preprocess_input(x.copy()))
    got = np.asarray(preprocess_layer(spec.preprocessing)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_modes_really_differ():
    x = np.full((1, 2, 2, 3), 200.0, dtype="float32")
    outs = {m: np.asarray(preprocess_layer(m)(x)) for m in ("caffe", "tf", "torch", "none", "unit")}
    assert outs["none"].max() == pytest.approx(200.0)  # EfficientNet expects 0..255, not 0..1
    assert outs["tf"].max() == pytest.approx(200 / 127.5 - 1)
    assert outs["unit"].max() == pytest.approx(200 / 255)
    assert not np.allclose(outs["caffe"][..., 0], outs["caffe"][..., 2])  # BGR mean subtraction


def test_efficientnet_is_not_rescaled_to_unit_range():
    # the study's bug: dividing by 255 before EfficientNet
    assert REGISTRY["EfficientNetB0"].preprocessing == "none"
    assert REGISTRY["VGG16"].preprocessing == "caffe"
    assert REGISTRY["InceptionV3"].preprocessing == "tf"
