"""Thumbnails of the integrity audit's example duplicate pairs, stored in the run directory.

engine.integrity.audit records example test/train twins as data paths only. The report must render from
the run directory alone (``auditrun render`` on a copy, without the dataset), so while the data is
still at hand the pipeline calls :func:`add_pair_thumbnails` to write small PNGs under
``run_dir/integrity/`` and add their run-relative paths to each pair as ``"files"``, before it
saves results.json. Pillow only; no TensorFlow.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.atomic import write_bytes
from engine.errors import InputError

log = logging.getLogger(__name__)

THUMBNAIL_DIR = "integrity"


#: How the audit names a frame of a multi-image file: ``a/b.nii.gz [slice 12]`` (discovery.frame_label).
_FRAME = re.compile(r"^(?P<path>.+) \[(?:slice|frame) (?P<frame>\d+)\]$")


def _thumbnail_png(source: str, root: Path, size: int, windowing=None) -> bytes:
    """A thumbnail of ``source`` (a path relative to ``root`` or absolute; a DICOM frame or NIfTI
    slice as the audit names it), read as training reads it: DICOM and NIfTI through the readers."""
    from engine.data.discovery import read_volume_frame, reader_kind

    match = _FRAME.match(source)
    path, frame = (Path(match["path"]), int(match["frame"])) if match else (Path(source), 0)
    path = path if path.is_absolute() else root / path
    if reader_kind(path):
        image = Image.fromarray(read_volume_frame(path, frame, windowing), mode="L").convert("RGB")
    else:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def add_pair_thumbnails(results: dict, run_dir: Path, data_root: Path | None = None, size: int = 192,
                        windowing=None) -> int:
    """Write ``integrity/pair<i>_{train,test}.png`` for every example pair without ``"files"``.

    Args:
        results: the run's results dict; ``results["integrity"]["example_pairs"]`` is updated in place
            (``pair["files"] = {"train": ..., "test": ...}``, paths relative to ``run_dir``).
        run_dir: the run directory.
        data_root: folder the pair paths are relative to (default: ``results["data"]["root"]``).
        size: longest side of a thumbnail in pixels.
        windowing: ``engine.data.readers.Windowing`` for DICOM frames and NIfTI slices (the run's
            ``data.windowing``; default "auto").

    Returns the number of pairs that got thumbnails. A pair whose images cannot be read keeps no
    ``"files"`` (the report then lists its paths) and is logged, never fatal.
    """
    integrity = results.get("integrity")
    pairs = integrity.get("example_pairs") if isinstance(integrity, dict) else None
    if not pairs:
        return 0
    root = Path(data_root if data_root is not None else (results.get("data") or {}).get("root") or ".")
    written = 0
    for index, pair in enumerate(pairs):
        if pair.get("files"):
            continue
        files: dict[str, str] = {}
        try:
            for side in ("train", "test"):
                rel = f"{THUMBNAIL_DIR}/pair{index}_{side}.png"
                write_bytes(Path(run_dir) / rel, _thumbnail_png(pair[side], root, size, windowing))
                files[side] = rel
        except (KeyError, OSError, UnidentifiedImageError, ValueError, InputError) as exc:
            log.warning("no thumbnail for duplicate pair %d (%s): %s", index, pair.get(side), exc)
            continue
        pair["files"] = files
        written += 1
    return written
