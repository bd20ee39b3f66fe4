"""Data stage: where the images are, which class each is, how the splits are carved, and the pixels.

Takes the manifest's ``[data]`` section (a data root in the Kaggle ``Training/``+``Testing/`` or the
folder-per-class layout, class aliases, split fractions, the seed). Gives ``ImageRecord`` lists, a
``Dataset`` (train / validation / test), decoded and resized uint8 arrays through ``ImageCache``,
and synthetic phantom datasets (``write_dataset``). Imports nothing from later stages.
"""

from importlib import import_module

#: Public name -> the module of this stage that defines it, imported on first use so that importing
#: the stage (or one module of it) does not import the others (TensorFlow among them).
_EXPORTS = {
    "Box": "synth",
    "Dataset": "discovery",
    "ImageCache": "discovery",
    "ImageRecord": "discovery",
    "class_coverage_warnings": "discovery",
    "decode_image": "discovery",
    "detect_layout": "discovery",
    "discover": "discovery",
    "fetch": "fetch",
    "images_by_class": "discovery",
    "min_class_images": "discovery",
    "min_training_images": "discovery",
    "phantom": "synth",
    "readable": "discovery",
    "split_validation": "discovery",
    "too_small_reason": "discovery",
    "write_dataset": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
