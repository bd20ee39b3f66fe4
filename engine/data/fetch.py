"""Download the public Sartaj brain-tumour MRI dataset with kagglehub (needs internet)."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.errors import InputError

KAGGLE_HANDLE = "sartajbhuvaji/brain-tumor-classification-mri"


def fetch(dest: Path) -> Path:
    """Download (or reuse kagglehub's cache) and copy the Training/ and Testing/ folders to ``dest``."""
    try:
        import kagglehub
    except ImportError:
        raise InputError("fetching the dataset needs kagglehub: pip install 'auditrun[download]'") from None
    try:
        src = Path(kagglehub.dataset_download(KAGGLE_HANDLE))
    except Exception as exc:  # noqa: BLE001 - network and auth errors come in many types
        raise InputError(f"could not download {KAGGLE_HANDLE} with kagglehub: {exc}. Without internet, copy "
                         "the dataset to a folder and set data.root or AUDITRUN_DATA_ROOT.") from None
    found = next((p for p in [src, *src.rglob("*")] if (p / "Training").is_dir() and (p / "Testing").is_dir()), None)
    if found is None:
        raise InputError(f"downloaded {KAGGLE_HANDLE} to {src}, but found no Training/ and Testing/ folders in it")
    dest.mkdir(parents=True, exist_ok=True)
    for split in ("Training", "Testing"):
        shutil.copytree(found / split, dest / split, dirs_exist_ok=True)
    return dest
