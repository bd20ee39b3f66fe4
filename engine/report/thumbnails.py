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
from typing import Mapping

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.atomic import write_bytes
from engine.errors import InputError
from engine.results import ExamplePair, Integrity, RunResults, as_run_results

log = logging.getLogger(__name__)

THUMBNAIL_DIR = "integrity"


#: How the audit names a frame of a multi-image file: ``a/b.nii.gz [slice 12]`` (identity.frame_label).
_FRAME = re.compile(r"^(?P<path>.+) \[(?:slice|frame) (?P<frame>\d+)\]$")


def _source(name: str, root: Path, sources: Mapping[str, tuple] | None) -> tuple[Path, int]:
    """The file and frame behind a pair's name: a neutral reference through ``sources``, else a
    path relative to ``root`` (or absolute), with the frame as the audit names it."""
    if sources and name in sources:
        path, frame = sources[name]
        return Path(path), int(frame)
    match = _FRAME.match(name)
    path, frame = (Path(match["path"]), int(match["frame"])) if match else (Path(name), 0)
    return (path if path.is_absolute() else root / path), frame


def _thumbnail_png(path: Path, frame: int, size: int, windowing=None) -> bytes:
    """A thumbnail of one image, read as training reads it: DICOM and NIfTI through the readers."""
    from engine.data.discovery import read_volume_frame
    from engine.data.formats import reader_kind

    if reader_kind(path):
        image = Image.fromarray(read_volume_frame(path, frame, windowing), mode="L").convert("RGB")
    else:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def add_pair_thumbnails(results: RunResults | dict, run_dir: Path, data_root: Path | None = None, size: int = 192,
                        windowing=None, sources: Mapping[str, tuple] | None = None) -> int:
    """Write ``integrity/pair<i>_{train,test}.png`` for every example pair without ``"files"``.

    Args:
        results: the run's results (the typed tree or results.json's dict); each of
            ``integrity.example_pairs`` gets ``files = {"train": ..., "test": ...}`` in place (paths
            relative to ``run_dir``).
        run_dir: the run directory.
        data_root: folder the pair paths are relative to (default: ``results["data"]["root"]``).
        size: longest side of a thumbnail in pixels.
        windowing: ``engine.data.readers.Windowing`` for DICOM frames and NIfTI slices (the run's
            ``data.windowing``; default "auto").
        sources: the (file, frame) behind each neutral file reference the pairs may name instead of
            a path (``identity.file_reference``, when the data holds patient ids).

    Returns the number of pairs that got thumbnails. A pair whose images cannot be read keeps no
    ``"files"`` (the report then lists its paths) and is logged, never fatal.
    """
    typed = as_run_results(results)
    pairs = typed.integrity.example_pairs if isinstance(typed.integrity, Integrity) else None
    if not pairs:
        return 0
    stored = typed.data.root if typed.data is not None else None
    root = Path(data_root if data_root is not None else stored or ".")
    written = 0
    for index, pair in enumerate(pairs):
        if not isinstance(pair, ExamplePair) or pair.files:
            continue
        files: dict[str, str] = {}
        source, side, name = None, None, None
        try:
            for side, name in (("train", pair.train), ("test", pair.test)):
                if name is None:
                    raise KeyError(side)
                source, frame = _source(name, root, sources)
                rel = f"{THUMBNAIL_DIR}/pair{index}_{side}.png"
                write_bytes(Path(run_dir) / rel, _thumbnail_png(source, frame, size, windowing))
                files[side] = rel
        except (KeyError, OSError, UnidentifiedImageError, ValueError, InputError) as exc:
            # the pair's name (a reference when the data holds patient ids), never the source path
            shown = name if name is not None else "?"
            reason = str(exc).replace(str(source), shown) if source is not None else str(exc)
            log.warning("no thumbnail for duplicate pair %d (%s): %s", index, name, reason)
            continue
        pair.files = files
        if typed is not results:
            # the caller's dict is the document the pipeline goes on to save
            results["integrity"]["example_pairs"][index]["files"] = files
        written += 1
    return written
