"""Paths the engine builds from user strings stay inside the folder they are meant for.

Every file or folder name taken from a manifest or the command line (experiment name, run id,
backbone and class names used in file names) goes through :func:`safe_name`, and every folder
built from one goes through :func:`child`, which resolves it (symlinks included) and refuses
anything that lands outside its parent. ``[experiment] name = ".."`` once put an experiment's
history beside the output root and let retention delete a user's folder there; the check lives
here, in one mechanism, rather than as a list of forbidden strings at each call site.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable

from engine.errors import InputError

#: Longest name accepted: well under every common file system's 255-byte limit, leaving room for
#: suffixes such as ``.validation.csv`` and ``.trash-`` prefixes.
MAX_NAME_LENGTH = 120


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one path component of ours, or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty name"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if "\x00" in name:
        return "must not contain a NUL character"
    if "/" in name or "\\" in name:  # both, whatever this OS's separator: runs are copied between hosts
        return "must not contain a path separator ('/' or '\\')"
    if name != name.strip():
        return "must not start or end with white space"
    if name.startswith("."):
        return "must not start with '.' (hidden names are the engine's own: .lock, .cache, .trash-*)"
    # Cc/Cf (control, format) and Zl/Zp (line, paragraph separators) break one-line messages and
    # are invisible or ambiguous in a file name.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for ch in name):
        return "must not contain control, format or line-separator characters"
    if len(name.encode("utf-8")) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} bytes long"
    return None


def safe_name(name: object, what: str) -> str:
    """``name`` unchanged if it is a single, ordinary path component; else InputError naming ``what``."""
    problem = name_problem(name)
    if problem is not None:
        raise InputError(f"{what} {name!r} {problem}")
    return name  # type: ignore[return-value]


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` or lies below it."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def child(parent: Path, name: str, what: str) -> Path:
    """``parent / name`` after checking the name, and that it does not resolve outside ``parent``.

    An existing symlink at ``parent / name`` that points elsewhere is refused: the engine would
    otherwise write (and retention delete) wherever the link leads.
    """
    path = Path(parent) / safe_name(name, what)
    if path.is_symlink() or not is_inside(path, parent):
        raise InputError(f"{what} {name!r}: {str(path)!r} resolves outside {str(parent)!r} "
                         "(a symbolic link?); the engine writes only inside its output root")
    return path




#: Files that mark a folder as auditrun's output: an experiment folder (its history, its latest
#: pointer) or a run folder (results.json beside its manifest copy).
EXPERIMENT_MARKERS = ("history.jsonl", "latest")
RUN_MARKERS = ("results.json", "manifest.toml")


def is_output_folder(folder: Path) -> bool:
    """True for an experiment or run folder auditrun wrote (data discovery never enters one)."""
    folder = Path(folder)
    try:
        return (any((folder / m).exists() for m in EXPERIMENT_MARKERS)
                or all((folder / m).is_file() for m in RUN_MARKERS))
    except OSError:
        return False


def _resolved(path: Path) -> Path:
    try:
        return Path(os.path.abspath(path)).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def check_output_root(output_root: Path, data_roots: Iterable[tuple[str, Path]] = ()) -> None:
    """InputError (exit 2) unless ``output_root`` may hold auditrun's output: not the file-system
    root or the home folder itself (the engine writes ``.cache`` and ``.keys`` there), and apart
    from every data root, in both directions, symbolic links resolved. ``data_roots``: (what,
    path) pairs, e.g. ``("data.root", ...)``.

    An output folder inside the data would be discovered as images on the next run (its figures
    and Grad-CAM copies of test images as a class), and a data root inside the output root could be
    deleted by retention.
    """
    out = _resolved(Path(output_root))
    if out == Path(out.anchor) or out == _resolved(Path.home()):
        where = "the file-system root" if out == Path(out.anchor) else "your home folder"
        raise InputError(f"output root {str(output_root)!r} is {where}; auditrun writes experiment folders, "
                         "a .cache and a .keys folder there: choose a folder of its own (e.g. reports/)")
    for what, root in data_roots:
        data = _resolved(Path(root))
        if out == data or data in out.parents:
            raise InputError(f"output root {str(output_root)!r} lies inside the data root {str(root)!r} ({what}); "
                             "the next run would read its figures as images. Choose an output folder outside "
                             "the data (--output-dir or experiment.output_dir)")
        if out in data.parents:
            raise InputError(f"data root {str(root)!r} ({what}) lies inside the output root {str(output_root)!r}; "
                             "retention and the cache manage that folder. Move the data or choose another "
                             "output folder (--output-dir or experiment.output_dir)")


def folder_key(name: str) -> str:
    """A folder name or label as class aliases match it: Unicode NFC, lower-cased. macOS writes
    ``méningioma`` decomposed (NFD), most editors composed (NFC): the same name to a reader."""
    return unicodedata.normalize("NFC", name).lower()


def relative_to_root(path: Path | str, root: Path | str | None) -> str:
    """``path`` as the report and the CSVs show it: relative to ``root`` (symlinks resolved), with
    forward slashes; unchanged when it lies elsewhere or there is no root. A reader sees where an
    image sits in the dataset, never the layout of the machine that ran the audit."""
    path = Path(path)
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


__all__ = ["EXPERIMENT_MARKERS", "MAX_NAME_LENGTH", "RUN_MARKERS", "check_output_root", "child", "folder_key", "is_output_folder", "is_inside", "name_problem", "relative_to_root", "safe_name"]


def slug(name: str) -> str:
    """A backbone label as a file stem."""
    s = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return s or "backbone"
