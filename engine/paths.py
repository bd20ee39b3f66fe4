"""Paths the engine builds from user strings stay inside the folder they are meant for.

Every file or folder name taken from a manifest or the command line (experiment name, run id,
backbone and class names used in file names) goes through :func:`safe_name`, and every folder
built from one goes through :func:`child`, which resolves it (symlinks included) and refuses
anything that lands outside its parent. ``[experiment] name = ".."`` once put an experiment's
history beside the output root and let retention delete a user's folder there; the check lives
here, in one mechanism, rather than as a list of forbidden strings at each call site.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

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


__all__ = ["MAX_NAME_LENGTH", "child", "is_inside", "name_problem", "relative_to_root", "safe_name"]
