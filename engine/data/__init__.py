"""Data stage: where the images are, which class each is, how the splits are carved, and the pixels.

Takes the manifest's ``[data]`` section (a data root in the Kaggle ``Training/``+``Testing/`` or the
folder-per-class layout, class aliases, split fractions, the seed). Gives ``ImageRecord`` lists, a
``Dataset`` (train / validation / test), decoded and resized uint8 arrays through ``ImageCache``,
synthetic phantom datasets (``write_dataset``), and patient pseudonyms under a per-experiment
key kept outside the run directory (``identity``). Imports nothing from later stages.

``readers`` reads DICOM, NIfTI and 16-bit PNG/TIFF frames and their metadata behind one interface
(``frames_of``, ``read_frame``, ``read_metadata``); discovery makes one ``ImageRecord`` per DICOM
frame and per selected NIfTI slice, keyed by (path, frame). ``synth_hospital`` writes a synthetic
hospital set (``write_hospital_dataset``; docs/data.md).
"""

from engine import lazy_exports

#: Public name -> the module of this stage that defines it (imported on first use).
_EXPORTS = {
    "display_path": "identity",
    "PreparedData": "preparation",
    "AuditedImages": "preparation",
    "prepare": "preparation",
    "redacting": "preparation",
    "dataset_fingerprint": "fingerprint",
    "record_label": "discovery",
    "Box": "synth",
    "Dataset": "discovery",
    "FrameRef": "readers",
    "ImageMeta": "readers",
    "SliceSelection": "readers",
    "Windowing": "readers",
    "ImageCache": "discovery",
    "DiskImages": "image_store",
    "as_images": "image_store",
    "ImageRecord": "records",
    "Pseudonymizer": "identity",
    "class_coverage_warnings": "discovery",
    "decode_image": "discovery",
    "detect_layout": "discovery",
    "FoundImages": "found",
    "discover": "discovery",
    "find_images": "found",
    "experiment_key": "identity",
    "experiment_pseudonymizer": "identity",
    "fetch": "fetch",
    "frames_of": "readers",
    "images_by_class": "discovery",
    "min_class_images": "splits",
    "min_training_images": "splits",
    "phantom": "synth",
    "prepare_data_root": "synth",
    "pseudonym": "identity",
    "read_frame": "readers",
    "read_metadata": "readers",
    "readable": "discovery",
    "split_validation": "splits",
    "too_small_reason": "discovery",
    "write_dataset": "synth",
    "write_hospital_dataset": "synth_hospital",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
