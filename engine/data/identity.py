"""Patient pseudonyms: a keyed hash of the patient id, and the key that makes it.

Hospital data carries patient ids; nothing auditrun writes may. Every id is replaced by
``pseudonym(id, key)`` = ``"p-"`` + the first 16 hex digits of HMAC-SHA256(key, id) before it
reaches a split, a CSV or the report. The same id under the same key always gives the same
pseudonym (so a patient's images stay together across splits and runs); without the key the id
cannot be recovered by hashing candidate ids, which a plain SHA-256 of a short, guessable id
would allow. 16 hex digits are 64 bits: among a million patients the chance that any two share a
pseudonym is about 3 in 100 million.

The key: 32 random bytes per experiment, in one of two places, never in the run directory.

* ``AUDITRUN_PSEUDONYM_KEY_FILE`` names a key file the hospital manages (exactly 32 bytes, e.g.
  ``head -c 32 /dev/urandom > key``). When set it always wins, and the file must exist: auditrun
  never creates a hospital's key.
* Otherwise ``<output_root>/.keys/<experiment>.key``, created on first use with ``os.urandom``,
  mode 0600 in a 0700 folder. Creation is atomic and exclusive: the key is written to a temporary
  file, then hard-linked to its name, which fails when the name exists (the ``O_EXCL`` rule, but
  the file appears complete), so two audits starting at once agree on one key: the loser reads
  the winner's.

Why not the run directory: run directories are the unit that gets shared, copied to a reviewer,
attached to a ticket or archived, and whoever holds the key can test a guessed patient id against
every pseudonym in the run. The output root holds the experiment's history and cache and stays on
the audit machine; the key stays with it, so later runs of the experiment reuse it and their
pseudonyms stay comparable. ``experiment_key(..., run_dir=...)`` refuses a key path inside the run
directory, whichever way it was chosen.

The key is never printed, logged or written anywhere but its file: errors name the file and its
length, never its bytes, and :class:`Pseudonymizer` (the object the pipeline holds) shows where its
key came from and a key id (an HMAC of a fixed label, so a report can say which key made its
pseudonyms) in ``repr``, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from engine.atomic import fsync_dir, writing
from engine.data.formats import IMAGE_FILE_SUFFIXES
from engine.errors import InputError
from engine.paths import folder_key, is_inside, relative_to_root, safe_name

#: Environment variable naming a hospital-managed key file; it wins over the experiment's own key.
KEY_ENV = "AUDITRUN_PSEUDONYM_KEY_FILE"
#: Length of a key in bytes (HMAC-SHA256's block-size-independent security level).
KEY_BYTES = 32
#: Hex digits of the HMAC kept in a pseudonym (64 bits).
PSEUDONYM_HEX = 16
PREFIX = "p-"
#: Folder under the output root that holds the experiments' keys.
KEYS_DIR = ".keys"
# How long a reader waits for a key another process is still writing (only on file systems
# without hard links, where the exclusive create cannot publish a complete file at once).
_WRITE_WAIT_S = 2.0


def pseudonym(patient_id: str, key: bytes) -> str:
    """``"p-"`` + 16 hex digits of HMAC-SHA256(key, patient_id as UTF-8).

    The id is taken exactly as given (no trimming or case folding: ``"P001"`` and ``"p001"`` are
    different patients unless the caller normalises them first).
    """
    if not isinstance(patient_id, str) or not patient_id:
        raise ValueError("patient_id must be a non-empty string")
    _check_key(key)
    digest = hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:PSEUDONYM_HEX]


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (``"k-"`` + 8 hex digits of HMAC(key, a fixed label)), for
    records that must say which key made a run's pseudonyms; it reveals nothing about the key."""
    _check_key(key)
    return "k-" + hmac.new(key, b"auditrun key id", hashlib.sha256).hexdigest()[:8]


def _check_key(key: object) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        # the length only: never the value
        length = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ValueError(f"a pseudonym key is {KEY_BYTES} bytes, got {length}")


def key_path(key_dir: Path, experiment: str) -> Path:
    """``<key_dir>/<experiment>.key``, the experiment name checked as one path component."""
    return Path(key_dir) / f"{safe_name(experiment, 'experiment name')}.key"


def load_key(path: Path) -> bytes:
    """The 32 bytes of a key file; InputError naming the file (never its content) otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"pseudonym key file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read pseudonym key file {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) != KEY_BYTES:
        raise InputError(f"pseudonym key file {str(path)!r} holds {len(data)} bytes; a key is exactly "
                         f"{KEY_BYTES} random bytes (e.g. `head -c {KEY_BYTES} /dev/urandom > FILE`)")
    return data


def key_file(key_dir: Path, experiment: str) -> Path:
    """The key file an experiment uses: ``$AUDITRUN_PSEUDONYM_KEY_FILE`` when set, else
    ``<key_dir>/<experiment>.key`` (:func:`key_path`). Nothing is read or created."""
    env = os.environ.get(KEY_ENV)
    return Path(env) if env else key_path(key_dir, experiment)


def experiment_key(key_dir: Path, experiment: str, *, run_dir: Path | None = None) -> bytes:
    """The experiment's pseudonym key: from ``$AUDITRUN_PSEUDONYM_KEY_FILE`` when set, else
    ``<key_dir>/<experiment>.key``, created once (32 random bytes, mode 0600) if absent.

    ``key_dir`` is normally ``<output_root>/.keys`` (:func:`default_key_dir`). ``run_dir``: the run
    directory, which must not hold the key (InputError if the key file would lie inside it).
    """
    env = os.environ.get(KEY_ENV)
    path = key_file(key_dir, experiment)
    if run_dir is not None and is_inside(path, run_dir):
        source = f"environment variable {KEY_ENV}" if env else "the key folder"
        raise InputError(f"{source} puts the pseudonym key at {str(path)!r}, inside the run directory "
                         f"{str(run_dir)!r}; run directories are shared and copied, the key must stay outside")
    if env:
        return load_key(path)
    if not path.exists():
        _create_key(path)
    return _read_when_complete(path)


def default_key_dir(output_root: Path) -> Path:
    """``<output_root>/.keys``: beside the experiments, outside every run directory."""
    return Path(output_root) / KEYS_DIR


def _create_key(path: Path) -> None:
    """Write a fresh random key at ``path`` unless one exists; exactly one concurrent creator wins."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the pseudonym key folder {str(path.parent)!r}: "
                         f"{exc.strerror or exc}") from None
    with writing(path):
        _write_new_key(path)
    fsync_dir(path.parent)


def _write_new_key(path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists: the O_EXCL rule for a complete file
        except FileExistsError:
            return  # another process created it first; everyone uses that one
        except OSError:
            _create_exclusive(path)  # a file system without hard links
    finally:
        Path(tmp).unlink(missing_ok=True)


def _create_exclusive(path: Path) -> None:
    """Fallback without hard links: ``O_CREAT | O_EXCL`` on the name itself, then write. A reader
    may see the file before its bytes; :func:`_read_when_complete` waits for them."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(KEY_BYTES))
        fh.flush()
        os.fsync(fh.fileno())


def _read_when_complete(path: Path) -> bytes:
    deadline = time.monotonic() + _WRITE_WAIT_S
    while True:
        try:
            return load_key(path)
        except InputError:
            # a short file may still be being written by the fallback creator; a stale one is an error
            try:
                short = path.stat().st_size < KEY_BYTES
            except OSError:
                short = False
            if not short or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


class Pseudonymizer:
    """Replaces patient ids with pseudonyms under one key, which it never shows.

    ``repr`` and ``str`` give the key's source (a file path) and :func:`key_id`, never the key;
    the key is not a public attribute, so ``vars()`` and dataclass-style dumps do not reach it
    either.
    """

    __slots__ = ("_key", "source", "key_id")

    def __init__(self, key: bytes, source: str):
        _check_key(key)
        self._key = bytes(key)
        self.source = str(source)
        self.key_id = key_id(self._key)

    def __call__(self, patient_id: str) -> str:
        return pseudonym(patient_id, self._key)

    def __repr__(self) -> str:
        return f"Pseudonymizer(key_id={self.key_id!r}, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self):  # no pickling: a pickle would carry the key into whatever file it lands in
        raise TypeError("a Pseudonymizer holds a secret key and cannot be pickled")


def experiment_pseudonymizer(output_root: Path, experiment: str, *, run_dir: Path | None = None) -> Pseudonymizer:
    """The :class:`Pseudonymizer` of an experiment: its key from :func:`experiment_key` with the
    default key folder ``<output_root>/.keys``."""
    env = os.environ.get(KEY_ENV)
    key = experiment_key(default_key_dir(output_root), experiment, run_dir=run_dir)
    source = env or str(key_file(default_key_dir(output_root), experiment))
    return Pseudonymizer(key, source)


# ---------------------------------------------------------------------------------------------
# Files of patients: how artefacts name them

#: Prefix of a file reference (``f-`` + 16 hex digits), as ``p-`` is of a patient's pseudonym.
FILE_PREFIX = "f-"
# A suffix kept on a reference: a short alphabetic one (.dcm, .png, .gz), never a UID's last number.
_KEPT_SUFFIX = re.compile(r"^\.[A-Za-z]{2,5}$")


def file_reference(relative: str, patient: str | None, pseudonymize: Callable[[str], str]) -> str:
    """The name artefacts give a file of a data set that holds patient ids: ``<patient pseudonym>/
    f-<16 hex digits>.<suffix>`` (``f-...`` alone for a file without a patient id).

    DICOM exports are often named after the patient (``DOE_JOHN_12345/IM0001``), so when the data
    holds patient ids no relative path leaves the data stage: the hex digits are the keyed hash
    (HMAC, the experiment's key, ``pseudonymize``) of ``"file:" + relative`` (the path relative to
    the data root, with forward slashes; its UTF-8 bytes, one character per byte). The same file under the same key keeps its reference
    across runs, and without the key the path cannot be guessed back. On the machine that holds
    the key and the data, a reference is found again by computing this function over the data
    root's files: ``auditrun locate MANIFEST REF`` does that.
    """
    # the path's bytes as the file system holds them (a name that is not UTF-8 arrives with
    # surrogate escapes, which UTF-8 cannot encode), one character per byte
    as_bytes = relative.encode("utf-8", "surrogateescape").decode("latin-1")
    digest = pseudonymize("file:" + as_bytes)[len(PREFIX):]
    suffix = Path(relative).suffix
    name = FILE_PREFIX + digest + (suffix.lower() if _KEPT_SUFFIX.match(suffix) else "")
    return f"{patient}/{name}" if patient else name


def frame_label(path: str, frame: int, frame_name: str | None) -> str:
    """``path`` as people read it, with the frame for a multi-image file: ``a/b.nii.gz [slice 12]``."""
    return path if frame_name is None else f"{path} [{frame_name} {frame}]"


def display_path(record, root: Path | str | None) -> str:
    """How every artefact (results.json, CSVs, report, log) names ``record``'s file: its neutral
    reference (``record.ref``, set by discovery when the data holds patient ids, see
    :func:`file_reference`), else its path relative to ``root``; with the frame of a multi-image
    file (``a/b.nii.gz [slice 3]``)."""
    ref = getattr(record, "ref", None)
    return frame_label(ref if ref else relative_to_root(record.path, root), getattr(record, "frame", 0),
                       getattr(record, "frame_name", None))


# ---------------------------------------------------------------------------------------------
# Messages: the one place a data path in an error or a log line becomes its neutral name

# A quoted string as Python's repr writes one ('x' or "x's"): our messages quote every path they name.
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")
# Where a path written without quotes ends: white space, a quote, or a colon followed by a space
# (``/data/x.png: line 3``), the separators our messages put after a path.
_UNQUOTED_END = re.compile(r"[\s'\"]|:(?=\s|$)")


#: Suffixes that make a bare quoted word a file name in a message ('DOE_JOHN.dcm'); a number such
#: as '1.5' is not one.
_FILE_SUFFIXES = IMAGE_FILE_SUFFIXES | {".txt", ".csv", ".npy", ".json", ".keras"}


class Redactor:
    """Turns every path below the data root in a message into its neutral name, when the data holds
    patient ids (otherwise it returns messages unchanged).

    Every message that may reach an artefact or the terminal (errors stored in results.json and
    history.jsonl, the progress log, the CLI's one error line) goes through one of these: a CSV
    row, a DICOM folder or a box file may be named after the patient, and the checks that quote
    them (a row listed twice, a file that cannot be read) know nothing of identity. A known file is
    shown as its record's reference (``p-.../f-....dcm``, what ``auditrun locate`` takes); any
    other path below the root keeps its leading structural folders (the split and class folders,
    never a patient's) and the rest becomes ``f-`` + the keyed hash of its relative path
    (:func:`file_reference`). The data root itself, which the manifest names, is kept.

    ``structural``: folder names that say nothing about a patient (``Training``, class folders),
    compared lower-cased. ``refs``: absolute path -> reference of the records discovery made.
    ``keep``: files the manifest itself names (the labels CSV), shown as they are.
    """

    def __init__(self, root: Path | str, pseudonymize: Callable[[str], str] | None, *,
                 structural: Iterable[str] = (), refs: Mapping[str, str] | None = None,
                 keep: Iterable[Path | str] = ()):
        self.roots = _root_forms(root)
        self.root = Path(self.roots[0])
        self._pseudonymize = pseudonymize
        self._structural = {folder_key(s) for s in structural}
        self._refs = dict(refs or {})
        self._keep = {os.path.normpath(os.path.abspath(str(p))) for p in keep}

    @property
    def active(self) -> bool:
        return self._pseudonymize is not None

    def __call__(self, message: str) -> str:
        if self._pseudonymize is None or not message:
            return message
        out = _QUOTED.sub(self._quoted, str(message))
        return self._unquoted(out)

    def path(self, path: Path | str) -> str:
        """How a message shows ``path`` (absolute, or relative to the data root)."""
        if self._pseudonymize is None:
            return str(path)
        rel = self._relative(str(path))
        return str(path) if rel is None else self._shown(rel)

    def _relative(self, text: str) -> str | None:
        """``text`` relative to the data root (posix), "" for the root itself, None when it lies
        elsewhere or is no path."""
        if not text or "\0" in text:
            return None
        candidate = Path(text)
        if not candidate.is_absolute():
            if not ("/" in text or "\\" in text or Path(text).suffix.lower() in _FILE_SUFFIXES
                    or _exists(self.root / text)):
                return None  # a bare word ('glioma', a key name) is no path unless the root holds it
            candidate = self.root / text
        lexical = os.path.normpath(candidate)
        for root in self.roots:
            if lexical == root:
                return ""
            if lexical.startswith(root.rstrip("/") + "/"):
                return Path(lexical).relative_to(root).as_posix()
        try:  # a path through a link into the data
            return candidate.resolve().relative_to(self.root).as_posix()
        except (OSError, ValueError, RuntimeError):
            return None

    def _shown(self, rel: str) -> str:
        if rel in ("", "."):
            return str(self.root)
        absolute = str(self.root / rel)
        if absolute in self._keep:
            return absolute
        if absolute in self._refs:
            return self._refs[absolute]
        parts = rel.split("/")
        kept = []
        for part in parts[:-1]:
            if folder_key(part) not in self._structural:
                break
            kept.append(part)
        if len(kept) == len(parts) - 1 and folder_key(parts[-1]) in self._structural:
            return rel  # a split or class folder: nothing to hide
        return "/".join(kept + [file_reference(rel, None, self._pseudonymize)])

    def _quoted(self, match: re.Match) -> str:
        text = match.group(1) if match.group(1) is not None else match.group(2)
        rel = self._relative(text)
        if rel is None:
            return match.group(0)
        return repr(self._shown(rel))

    def _unquoted(self, message: str) -> str:
        """Paths written without quotes that start with the data root: the longest known file
        there, else everything up to the next separator."""
        for root in self.roots:
            start = 0
            prefix = root.rstrip("/") + "/"
            while (i := message.find(prefix, start)) >= 0:
                end = self._known_end(message, i) or self._separator_end(message, i + len(prefix))
                shown = self.path(message[i:end])
                message = message[:i] + shown + message[end:]
                start = i + len(shown)
        return message

    def _known_end(self, message: str, i: int) -> int | None:
        """The end of the longest known file, or existing path, written at ``message[i:]``: a
        name may hold spaces and colons, so every separator is a candidate end."""
        best = None
        for j in range(i + 1, len(message) + 1):
            if j < len(message) and message[j] not in " \t\n:'\"":
                continue
            text = message[i:j]
            if text in self._refs or _exists(Path(text)):
                best = j
        return best

    @staticmethod
    def _separator_end(message: str, i: int) -> int:
        found = _UNQUOTED_END.search(message, i)
        return found.start() if found else len(message)


def _root_forms(root: Path | str) -> list[str]:
    """The data root as messages may write it: resolved first, then as given (a link, say)."""
    given = os.path.normpath(os.path.abspath(str(root)))
    try:
        resolved = str(Path(root).resolve())
    except (OSError, RuntimeError):
        resolved = given
    return list(dict.fromkeys([resolved, given]))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def no_redaction(root: Path | str) -> Redactor:
    """A Redactor that changes nothing: for data without patient ids."""
    return Redactor(root, None)


__all__ = ["FILE_PREFIX", "KEY_BYTES", "KEY_ENV", "Pseudonymizer", "default_key_dir", "display_path",
           "experiment_key", "experiment_pseudonymizer", "file_reference", "key_file", "Redactor", "no_redaction", "key_id", "key_path", "load_key",
           "pseudonym"]
