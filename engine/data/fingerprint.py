"""One dataset's identity: a hash over its file list, the key reuse and the history compare."""

from __future__ import annotations

import hashlib
import json
from typing import Iterable


def dataset_fingerprint(files: Iterable[tuple[str, int, int | str]]) -> str:
    """SHA-256 over the dataset's file list, independent of listing order and of the data root.

    ``files``: ``(relpath, size_bytes, mtime_ns or content sha)`` per image, relpath relative to the
    data root. Backslashes are normalised to ``/`` so one dataset fingerprints alike on every OS.
    Using mtime is cheap but conservative (a plain copy changes it, so a copied dataset counts as
    changed); pass a content hash instead where the data is re-synced nightly.
    """
    entries = sorted((str(rel).replace("\\", "/"), int(size), stamp) for rel, size, stamp in files)
    digest = hashlib.sha256()
    for entry in entries:
        # One JSON array per line: no separator inside a file name can make two lists collide.
        digest.update(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()
