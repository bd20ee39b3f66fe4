"""``auditrun evaluate``'s predictions as Dask tasks (engine.compute): each worker loads the model
from its file once, decodes its chunk of images from the shared file system and sends back
probabilities. Chunks are whole multiples of the prediction batch, so every batch a worker runs
holds the same images as the local loop's: the same probabilities, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: Images per task: a multiple of engine.training.predict's batch (64) and of Grad-CAM's (16).
CHUNK = 512

_loaded: dict = {}  # per process (a worker): the models its tasks loaded, by ModelRef


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load a finished run's model: the saved Keras file, or an imported
    model's results entry (its own file and preprocessing)."""

    path: str | None = None
    entry: dict | None = field(default=None, hash=False, compare=False)
    name: str = ""
    class_names: tuple[str, ...] = ()

    def load(self):
        key = (self.path, self.name, self.class_names)
        if key not in _loaded:
            from engine.manifest import folder_aliases
            from engine.training import from_entry, load_saved_model

            _loaded[key] = (load_saved_model(Path(self.path)) if self.path is not None else
                            from_entry(self.entry, list(self.class_names), folder_aliases(list(self.class_names), {})))
        return _loaded[key]


def model_ref(run_dir: Path, e: dict, class_names: Sequence[str]) -> ModelRef:
    """The ModelRef of a finished results.json entry of the run at ``run_dir``."""
    if e.get("source") == "imported":
        return ModelRef(entry=dict(e), name=e["name"], class_names=tuple(class_names))
    return ModelRef(path=str((Path(run_dir) / e["artifacts"]["model"]).resolve()), name=e["name"],
                    class_names=tuple(class_names))


def predict_chunk(records: list, ref: ModelRef, size: int, windowing, tta_flip: bool) -> np.ndarray:
    """One task: the chunk's images decoded at ``size`` and predicted by the model ``ref`` names."""
    from engine.data.discovery import decode_records
    from engine.evaluation.scores import predict_probs

    return predict_probs(ref.load(), decode_records(records, size, windowing, workers=1), tta_flip=tta_flip)


def predict_on(cluster, ref: ModelRef, records: list, size: int, windowing, tta_flip: bool,
               echo: Callable[[str], None] | None = None, label: str = "predictions") -> np.ndarray:
    """(n, k) probabilities of ``records`` computed on the cluster's workers, in order."""
    from engine import compute
    from engine.progress import Progress

    chunks = compute.chunks(records, CHUNK)
    with Progress.for_echo(echo, f"{label} on {cluster.address}", len(records)) as line:
        parts = list(compute.map_ordered(predict_chunk, chunks, cluster=cluster, progress=line.update,
                                         ref=ref, size=size, windowing=windowing, tta_flip=tta_flip))
    return np.concatenate(parts) if parts else np.zeros((0, len(ref.class_names)))
