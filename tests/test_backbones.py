"""ImageNet weights that cannot be downloaded: a clear error, or a fallback the results admit."""

from __future__ import annotations

import pytest

from engine.training import backbones
from engine.errors import InputError
from engine.manifest import BackboneConfig


@pytest.fixture
def offline(monkeypatch):
    """Make every ImageNet download fail the way keras does without network."""
    real = backbones.BackboneSpec.build

    def build(self, weights, input_size):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
                            "[Errno -2] Name or service not known")
        return real(self, weights, input_size)

    monkeypatch.setattr(backbones.BackboneSpec, "build", build)


def test_missing_imagenet_weights_is_a_clear_error(offline):
    cfg = BackboneConfig(name="MobileNetV3Small", input_size=32)
    with pytest.raises(InputError) as err:
        backbones.load_backbone(cfg)
    msg = str(err.value)
    assert "MobileNetV3Small" in msg and "Name or service not known" in msg and 'weights_fallback = "random"' in msg


def test_fallback_to_random_is_recorded_in_words(offline):
    cfg = BackboneConfig(name="MobileNetV3Small", input_size=32, weights_fallback="random")
    loaded = backbones.load_backbone(cfg)
    assert loaded.weights_requested == "imagenet" and loaded.weights_used == "random"
    assert loaded.random_init and "could not be downloaded" in loaded.note and "NOT transfer learning" in loaded.note
    assert loaded.preprocessing == "none"  # MobileNetV3 rescales inside the model


def test_from_scratch_batchnorm_momentum_is_lowered():
    import keras

    model = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert backbones.converge_batchnorm(model) > 0
    assert all(layer.momentum <= 0.9 for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization))
