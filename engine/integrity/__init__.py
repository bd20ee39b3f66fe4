"""Integrity stage: what is wrong with the data before any model sees it.

Takes image records. Gives an ``IntegrityReport`` (exact and near duplicates within and across
splits, the leakage-free test subset, label conflicts, unreadable or too-small images) and the
distribution-shift check of leakage-free test images against training (``measure_shift``).
Loads no model; imports nothing from later stages.
"""

from engine import lazy_exports

#: Public name -> the module of this stage that defines it (imported on first use).
_EXPORTS = {
    "check_shift": "stage",
    "ClassShift": "shift",
    "DuplicateGroup": "audit",
    "FileRef": "audit",
    "FingerprintCache": "hashing",
    "ImageFingerprint": "hashing",
    "ImageRecordLike": "audit",
    "IntegrityConfig": "audit",
    "IntegrityReport": "audit",
    "LabelConflict": "audit",
    "MatchPair": "audit",
    "ShiftResult": "shift",
    "SplitImageStats": "audit",
    "UnreadableFile": "audit",
    "UnreadableImage": "hashing",
    "audit": "audit",
    "check_pixel_limit": "hashing",
    "domain_auc": "shift",
    "duplicate_groups": "audit",
    "file_sha256": "hashing",
    "fingerprint_bytes": "hashing",
    "fingerprint_files": "hashing",
    "hamming_pairs": "hashing",
    "image_descriptors": "shift",
    "measure_shift": "shift",
    "n_words": "hashing",
    "pack_bits": "hashing",
    "strict_decoding": "hashing",
    "summary_text": "audit",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
