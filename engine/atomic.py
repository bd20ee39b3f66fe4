"""The engine's one write path: atomic, and loud and precise on a full disk.

Atomic: write to a temporary file in the same folder, flush it to disk, then ``os.replace`` it
over the target (atomic on POSIX within one filesystem); a reader sees the old file or the new
one, never half of either.

Every write of the engine goes through here or inside :func:`writing`, which turns a full,
over-quota or read-only file system (ENOSPC, EDQUOT, EROFS, and a short write on a full disk)
into a :class:`~engine.errors.StorageError` naming the file (docs/architecture.md, "Rules every
run keeps").
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import StorageError


#: errno values that mean "the output's file system takes no more": full, over quota, read-only.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system"}
#: Below this many free bytes a write that failed without an errno (numpy's "N requested and M
#: written", a library's own OSError) is taken for a full disk.
_NEARLY_FULL = 1 << 20


def storage_problem(exc: BaseException, path: Path | str) -> str | None:
    """Why ``exc``, raised while writing ``path``, means the file system takes no more, or None.

    An OSError anywhere in the exception's chain (libraries wrap them) counts: by its errno, or,
    without one, by the state of the file system that holds ``path`` (read-only, or under 1 MiB free).
    """
    seen = set()
    found = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno in _STORAGE_ERRNOS:
                return _STORAGE_ERRNOS[exc.errno]
            found = found or exc
        exc = exc.__cause__ or exc.__context__
    if found is None or found.errno not in (None, errno.EIO, 0):
        return None
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return _STORAGE_ERRNOS[errno.EROFS]
    if st.f_bavail * st.f_frsize < _NEARLY_FULL:
        return _STORAGE_ERRNOS[errno.ENOSPC]
    return None


@contextlib.contextmanager
def writing(path: Path | str):
    """Around any write of ``path``: a full, over-quota or read-only file system becomes a
    StorageError naming ``path`` (exit 2, the run marked failed); other errors pass unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified, and re-raised unless it is the disk
        reason = storage_problem(exc, path)
        if reason is None:
            raise
        raise StorageError(path, reason) from None


def write_bytes(path: Path | str, data: bytes) -> Path:
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def overwrite_in_place(path: Path | str, data: bytes) -> Path:
    """Rewrite an existing file where it lies, for when a full disk has no room for the temporary
    copy ``write_bytes`` needs: the old blocks are reused. Not atomic, so only a last resort (a
    failed run's final status); if the new bytes do not fit, the old ones are written back."""
    path = Path(path)
    with writing(path):
        old = path.read_bytes()
        with open(path, "r+b") as fh:
            try:
                fh.truncate(0)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            except OSError:
                fh.seek(0)
                fh.truncate(0)
                fh.write(old)
                fh.flush()
                raise
    return path


@contextlib.contextmanager
def scratch_folder(parent: Path | str, prefix: str = ".tmp-"):
    """A temporary folder inside ``parent`` that Python's ``tempfile`` (and TensorFlow, through
    TMPDIR) use while the block runs, removed afterwards.

    Keras extracts and builds every .keras archive in the system temp folder and leaves it there
    when a save fails; everything the engine writes must stay inside its output root.
    """
    import shutil

    parent = Path(parent)
    with writing(parent):
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    before, env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = before
        if env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = env
        shutil.rmtree(folder, ignore_errors=True)


def fsync_dir(directory: Path | str) -> None:
    """Make a new directory entry durable (after creating a file in ``directory``)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; durability there is best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _default(obj: Any):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(data: Any, *, compact: bool = False) -> str:
    """JSON as the engine writes it: indented, or ``compact`` (no white space, the smallest file)."""
    layout = {"separators": (",", ":")} if compact else {"indent": 2}
    return json.dumps(data, default=_default, allow_nan=False, **layout) + "\n"


def write_json(path: Path | str, data: Any) -> Path:
    return write_text(path, dumps_json(data))


def save_keras_model(model, path: Path | str) -> Path:
    """Save a Keras model atomically (keras insists on a .keras suffix for the temp name too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    with writing(path):
        try:
            model.save(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path
