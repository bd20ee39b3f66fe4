"""Where a run came from: package versions, platform, code version."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import engine

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn", "pandas", "jinja2", "weasyprint",
            "matplotlib", "seaborn", "imagehash", "pillow", "scipy", "statsmodels", "click")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the code that ran (the engine's checkout), or None outside git."""
    here = path or Path(engine.__file__).resolve().parent
    # --no-optional-locks: ``git status`` would otherwise refresh the index under .git/index.lock,
    # and a user committing in the checkout while an audit starts would be refused.
    git = ["git", "--no-optional-locks", "-C", str(here)]
    try:
        out = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out + ("-dirty" if dirty else "") if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "auditrun": engine.__version__,
    }
