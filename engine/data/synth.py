"""Synthetic brain-like MRI phantoms with planted tumours and YOLO box files.

Each image is a grey head phantom (skull ring, textured brain ellipse, ventricles, noise). The
tumour classes differ the way the real ones do on axial/coronal slices:

* glioma     - irregular, ring-enhancing mass inside a hemisphere (bright rim, dark core)
* meningioma - homogeneous bright round mass attached to the skull, at the brain's edge
* pituitary  - small bright mass in the midline below the brain centre (sella region)
* no_tumor   - no mass

Every tumour image gets ``<image>.txt`` beside it in the YOLO convention
``class x_center y_center width height`` (normalised to 0..1), so Grad-CAM can be scored with
the pointing game.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import manifest as manifest_mod
from engine.atomic import write_bytes, write_text
from engine.errors import InputError

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
KAGGLE_FOLDERS = {"glioma": "glioma_tumor", "meningioma": "meningioma_tumor",
                  "no_tumor": "no_tumor", "pituitary": "pituitary_tumor"}


@dataclass(frozen=True)
class Box:
    x_center: float
    y_center: float
    width: float
    height: float

    def yolo(self, class_id: int) -> str:
        return f"{class_id} {self.x_center:.6f} {self.y_center:.6f} {self.width:.6f} {self.height:.6f}\n"


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.normal(size=(max(2, size // scale), max(2, size // scale)))
    reps = int(np.ceil(size / coarse.shape[0]))
    up = np.kron(coarse, np.ones((reps, reps)))[:size, :size]
    return up


@dataclass(frozen=True)
class Tumour:
    """A tumour of one patient: centre and radius (fractions of the image side) and its look."""

    ty: float
    tx: float
    rad: float
    phase: float = 0.0  # glioma: phase of the irregular outline
    core: float = 0.0  # glioma: necrotic core intensity
    grain: np.ndarray | None = None  # meningioma: (size, size) texture of the mass


@dataclass(frozen=True)
class Anatomy:
    """One patient's head and tumour, drawn once by ``draw_anatomy``; ``render`` draws slices of it."""

    label: str
    size: int
    cy: float
    cx: float
    ry: float
    rx: float
    texture: np.ndarray  # (size, size) brain texture
    tumour: Tumour | None


def draw_anatomy(label: str, size: int, rng: np.random.Generator) -> Anatomy:
    """The random part of a phantom of class ``label``: head shape, brain texture, tumour."""
    cy, cx = 0.5 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03)
    ry, rx = rng.uniform(0.40, 0.45), rng.uniform(0.33, 0.38)
    texture = 0.35 + 0.06 * _smooth_noise(rng, size, 4) + 0.04 * _smooth_noise(rng, size, 12)
    tumour = None
    if label == "glioma":
        side = rng.choice([-1, 1])
        ty, tx = cy + rng.uniform(-0.2, 0.05), cx + side * rng.uniform(0.12, 0.17)
        rad = rng.uniform(0.12, 0.16)
        phase = rng.uniform(0, 6)
        tumour = Tumour(ty, tx, rad, phase=phase, core=0.18 + 0.05 * rng.random())
    elif label == "meningioma":
        ang = rng.uniform(-np.pi * 0.9, -np.pi * 0.1)  # upper convexity
        rad = rng.uniform(0.10, 0.13)
        ty, tx = cy + (ry - rad) * 0.92 * np.sin(ang), cx + (rx - rad) * 0.92 * np.cos(ang)
        tumour = Tumour(ty, tx, rad, grain=_smooth_noise(rng, size, 6))
    elif label == "pituitary":
        ty, tx = cy + rng.uniform(0.13, 0.18), cx + rng.uniform(-0.02, 0.02)
        rad = rng.uniform(0.085, 0.105)
        tumour = Tumour(ty, tx, rad)
    return Anatomy(label, size, cy, cx, ry, rx, texture, tumour)


def render(anatomy: Anatomy, z: float = 0.0) -> tuple[np.ndarray, Box | None]:
    """The noiseless (size, size) float32 slice at ``z`` of ``anatomy`` (about 0..1) and its tumour box.

    ``z`` in [-1, 1] is the slice's place in the patient's slab, 0 its middle: away from the middle
    the head narrows a little, the tumour's cross-section shrinks (to 0.87 of its radius at the slab's
    ends), drifts and turns, and the texture shifts, so neighbouring slices look alike but not the same.
    """
    a, size = anatomy, anatomy.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    ry, rx = a.ry * (1.0 - 0.04 * z * z), a.rx * (1.0 - 0.04 * z * z)
    r = np.sqrt(((yy - a.cy) / ry) ** 2 + ((xx - a.cx) / rx) ** 2)
    img = np.zeros((size, size), np.float32)
    img[(r > 0.90) & (r <= 1.0)] = 0.85  # skull
    brain = r <= 0.88
    texture = np.roll(a.texture, int(round(2 * z)), axis=0)
    img[brain] = texture[brain]
    # ventricles: two dark ellipses near the centre
    for side in (-1, 1):
        v = ((yy - a.cy + 0.02) / (0.09 * (1.0 - 0.3 * z * z))) ** 2 + ((xx - a.cx - side * 0.05) / 0.03) ** 2
        img[(v <= 1) & brain] = 0.12

    box = None
    t = a.tumour
    if t is not None:
        label = a.label
        ty, tx = t.ty + 0.02 * z, t.tx
        rad = t.rad * np.sqrt(1.0 - 0.25 * z * z)
        # irregular outline for gliomas, round otherwise
        theta = np.arctan2(yy - ty, xx - tx)
        wobble = 1.0 + (0.25 * np.sin(3 * theta + (t.phase + 0.3 * z)) if label == "glioma" else 0.0)
        d = np.sqrt((yy - ty) ** 2 + (xx - tx) ** 2) / (rad * wobble)
        mass = d <= 1.0
        if label == "glioma":
            img[mass] = 0.95  # enhancing rim
            img[d <= 0.6] = t.core  # necrotic core
        elif label == "meningioma":
            img[mass] = 0.90 + 0.02 * t.grain[mass]
        else:
            img[mass] = 1.0
        ys, xs = np.nonzero(mass)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = Box((x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size)
    return img, box


def phantom(label: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """One (size, size) uint8 phantom of class ``label`` and its tumour box (None for no_tumor)."""
    img, box = render(draw_anatomy(label, size, rng))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), box


#: Written into OUT: every file write_dataset wrote there, with its SHA-256, so that ``--force``
#: replaces only our own, unchanged files and never a user's.
RECORD_FILE = ".auditrun-synth.json"


def write_dataset(out: Path, *, per_class: int, size: int = 64, seed: int = 0,
                  test_fraction: float = 0.25, kaggle_names: bool = True,
                  force: bool = False) -> dict[str, dict[str, int]]:
    """Write ``out/Training/<class>/`` and ``out/Testing/<class>/`` PNG phantoms with box files.

    ``per_class`` images per class are split into training and testing by ``test_fraction``.
    A non-empty ``out`` is refused unless ``force``; even then a file is only replaced when this
    function wrote it earlier and nobody changed it since (see RECORD_FILE). Everything is checked
    before the first byte is written. Returns counts {split: {class: n}}.
    """
    files, counts = _generate(per_class=per_class, size=size, seed=seed, test_fraction=test_fraction,
                              kaggle_names=kaggle_names)
    write_files(Path(out), files, force=force)
    return counts


def prepare_data_root(m) -> Path:
    """The manifest's data root, resolved, once ``[data.synthetic]`` has written its phantoms there
    if it was missing (engine.manifest.synthetic_root); sets ``m.data.root`` to it. InputError,
    worded as ``manifest.load``'s, when the phantoms cannot be written or the root is unusable.

    Called by the commands that read the data (run, check-data, locate) right after loading the
    manifest, so the manifest parser itself writes nothing. A no-op write when the root exists."""
    root = manifest_mod.synthetic_root(m)
    if root is not None:
        syn = m.data.synthetic
        try:
            write_dataset(root, per_class=syn.per_class, size=syn.size, seed=syn.seed,
                          test_fraction=syn.test_fraction)
        except (OSError, InputError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise manifest_mod.manifest_error(
                m, f"manifest key 'data.root' points to {str(root)!r}, where [data.synthetic] cannot "
                f"write its phantoms: {reason}") from None
    try:
        m.data.root = manifest_mod.resolve_data_root(m)
    except InputError as exc:
        raise manifest_mod.manifest_error(m, str(exc)) from None
    return m.data.root


def write_files(out: Path, files: dict[str, bytes], *, force: bool) -> None:
    """Write ``files`` ({path relative to ``out``: bytes}) under ``out`` and record them in RECORD_FILE.

    The refusals of ``write_dataset`` (a non-empty ``out`` without ``force``; a file auditrun did not
    write, or that changed since) are checked for every file before the first byte is written.
    """
    record = _check_target(out, files, force)
    for rel, data in files.items():
        write_bytes(out / rel, data)
        record[rel] = hashlib.sha256(data).hexdigest()
    write_text(out / RECORD_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _generate(*, per_class: int, size: int, seed: int, test_fraction: float,
              kaggle_names: bool) -> tuple[dict[str, bytes], dict[str, dict[str, int]]]:
    """The dataset's files in memory ({relative path: bytes}) and its counts."""
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {"Training": {}, "Testing": {}}
    files: dict[str, bytes] = {}
    n_test = max(1, round(per_class * test_fraction))
    for class_id, label in enumerate(CLASSES):
        folder_name = KAGGLE_FOLDERS[label] if kaggle_names else label
        for i in range(per_class):
            split = "Testing" if i < n_test else "Training"
            img, box = phantom(label, size, rng)
            # grey scans stored as 3-channel files, like the real data
            buf = BytesIO()
            Image.fromarray(img).convert("RGB").save(buf, format="PNG")
            stem = f"{split}/{folder_name}/{label} ({i + 1})"
            files[f"{stem}.png"] = buf.getvalue()
            if box is not None:
                files[f"{stem}.txt"] = box.yolo(class_id).encode("utf-8")
            counts[split][label] = counts[split].get(label, 0) + 1
    return files, counts


def _check_target(out: Path, files: dict[str, bytes], force: bool) -> dict[str, str]:
    """The record of files written earlier; InputError if writing ``files`` could lose a user's file."""
    if out.exists() and not out.is_dir():
        raise InputError(f"synth-data: {str(out)!r} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not force:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise InputError(f"synth-data: {str(out)!r} is not empty ({len(entries)} entries: {shown}); choose a new "
                         "or empty folder, or pass --force to add to it (files auditrun did not write are "
                         "never overwritten)")
    record: dict[str, str] = {}
    if (out / RECORD_FILE).is_file():
        try:
            loaded = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
            record = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            record = {}  # unreadable record: treat every existing file as the user's
    for rel in files:
        path = out / rel
        if not path.exists() and not path.is_symlink():
            continue
        ours = (path.is_file() and not path.is_symlink() and rel in record
                and hashlib.sha256(path.read_bytes()).hexdigest() == record[rel])
        if not ours:
            raise InputError(f"synth-data: {str(path)!r} already exists and was not written by auditrun "
                             "(or was changed since); nothing was written. Choose another folder")
    return record
