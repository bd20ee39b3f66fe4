"""Per-image predictions of one backbone: the CSV files beside results.json, written and read back.

``predictions/<backbone>.csv`` holds the test split, ``predictions/<backbone>.validation.csv`` the
validation split (later stages, temperature scaling among them, need it on a resumed or reused run).
Paths are relative to the data root (neutral file references when the data holds patient ids,
``identity.display_path``); probabilities are rounded to 6 places.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engine.atomic import write_text
from engine.data.identity import display_path

PREDICTIONS_DIR = "predictions"


def prediction_files(stem: str) -> dict[str, str]:
    """Run-relative CSV paths of one backbone, by split ("test", "val")."""
    return {"test": f"{PREDICTIONS_DIR}/{stem}.csv", "val": f"{PREDICTIONS_DIR}/{stem}.validation.csv"}


def validation_file(test_file: str) -> str:
    """The validation CSV beside a test CSV named in results.json's ``artifacts.predictions``."""
    path = Path(test_file)
    return (path.parent / f"{path.stem}.validation.csv").as_posix()


def write_predictions(path: Path, records, y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                      root: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({
        "path": [display_path(r, root) for r in records],
        "true_class": [class_names[i] for i in y_true],
        "predicted_class": [class_names[i] for i in probs.argmax(1)],
    })
    for i, c in enumerate(class_names):
        df[f"prob_{c}"] = np.round(probs[:, i], 6)
    write_text(path, df.to_csv(index=False))


def read_probabilities(path: Path, class_names: Sequence[str]) -> np.ndarray | None:
    """(n, k) probabilities from a predictions CSV; None when the file is absent."""
    import pandas as pd

    if not Path(path).is_file():
        return None
    return pd.read_csv(path)[[f"prob_{c}" for c in class_names]].to_numpy()


__all__ = ["PREDICTIONS_DIR", "prediction_files", "read_probabilities", "validation_file", "write_predictions"]
