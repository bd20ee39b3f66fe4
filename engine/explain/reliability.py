"""The explanation checks of one trained backbone, as the audit runs them (issue 18).

``explain_reliability`` picks the test images (annotated ones first), runs the randomisation and
faithfulness checks of ``checks.explanation_checks`` once per ``[gradcam] method`` on them and
draws each method's randomisation-cascade figure. Localisation is not scored on this small sample:
engine.explain.localise scores it once per method on every annotated image. It returns the ``explanations`` list of the
backbone's results.json entry: one ``ExplanationChecks.to_json()`` block per method, plus
``figure`` ({path, alt, caption}: the cascade PNG). A method that fails gets
``{"method", "error"}`` and the others still run. See docs/explanations.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engine.data import as_images
from engine.paths import relative_to_root
from engine.results import METHOD_LABELS

#: Defaults of ``[gradcam]`` (engine.manifest.GradcamConfig) for callers without a manifest.
DEFAULT_CHECK_IMAGES = 12


def check_sample(boxes: Sequence[list], seed: int, n_images: int) -> list[int]:
    """Indices of the images the checks run on: the boxed images (a seeded sample of ``n_images``
    when there are more, the pointing game's sample rule), topped up to ``n_images`` with a seeded
    sample of the unboxed ones, so randomisation and faithfulness still run without boxes."""
    from engine.explain.gallery import boxed_sample

    boxed = boxed_sample(boxes, seed, n_images)
    rest = [i for i in range(len(boxes)) if not boxes[i]]
    room = max(0, n_images - len(boxed))
    if len(rest) > room:
        rng = np.random.default_rng([int(seed), 18])
        rest = sorted(rng.choice(rest, size=room, replace=False).tolist())
    return sorted(boxed + rest)


def original_size(path: str | Path | None) -> tuple[int, int] | None:
    """(height, width) of an image file from its header; None when PIL cannot read it (DICOM,
    NIfTI: their boxes are rare and the tolerance then falls back to model-input pixels)."""
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
        return int(height), int(width)
    except Exception:  # noqa: BLE001 - any unreadable header means "size unknown", not a failure
        return None


def _figure(result, image: np.ndarray, method: str, path: Path, run_dir: Path, n: int) -> dict:
    from engine.explain.figures import cascade_panels, randomisation_cascade_figure

    labels, maps = cascade_panels(result.randomisation)
    drawn = randomisation_cascade_figure(image, maps, labels, path, method=method)
    r = result.randomisation
    verdict = ("the maps depend on the learned weights" if r.passed else
               "the maps barely change, so they do not depend on the learned weights")
    caption = (f"{method} on one test image, trained and after each randomisation step. Similarity to the "
               f"trained map (Spearman, SSIM): "
               + "; ".join(f"{s['label']} {s['spearman']:.2f}, {s['ssim']:.2f}" for s in drawn["steps"][1:])
               + f". Median over {n} images after the last step: Spearman {r.spearman_median:.2f}, SSIM "
               f"{r.ssim_median:.2f} (passes below {r.threshold:.1f}): {verdict}.")
    return {"path": relative_to_root(path, run_dir), "alt": drawn["alt"], "caption": caption}


def explain_reliability(model, images: np.ndarray, y_true: Sequence[int], outlines: Sequence,
                        methods: Sequence[str], seed: int, out_dir: Path | str, run_dir: Path | str, *,
                        layer: str | None = None, n_images: int = DEFAULT_CHECK_IMAGES,
                        cascade_steps: int = 4, faithfulness_steps: int = 8,
                        cascade_draws: int = 1, echo=None) -> list[dict]:
    """The ``explanations`` block of one backbone: the three checks per method.

    Args:
        images: (n, H, W, 3) test images at the model input size, RGB 0..255.
        y_true: (n,) true class indices (the class explained, as in the pointing game).
        outlines: (n,) each image's tumour outline or None: annotated images are checked first
            (their localisation is scored once, over all of them, by engine.explain.localise).
        methods: explanation methods, primary first (a name, or an explainer callable as
            ``checks.explanation_checks`` takes it); out_dir: where the cascade PNGs go.
    """
    from engine.explain.checks import explanation_checks
    from engine.explain.methods import uses_target_layer

    out_dir, run_dir = Path(out_dir), Path(run_dir)
    boxes = [[] if o is None else [o] for o in outlines]
    idx = check_sample(boxes, seed, n_images)
    if not idx:
        return []
    x = np.asarray(as_images(images)[idx], dtype=np.float32)  # only the sampled rows (a split may be on disk)
    cls = np.asarray(y_true, dtype=np.int64)[idx]
    none = [None] * len(idx)  # localisation is not scored here: engine.explain.localise scores every image
    out = []
    for method in methods:
        name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
        try:
            result = explanation_checks(model, x, cls, none, method, seed,
                                        layer=layer if uses_target_layer(method) else None,
                                        cascade_steps=cascade_steps, cascade_draws=cascade_draws,
                                        faithfulness_steps=faithfulness_steps)
            block = result.to_json()
            del block["pointing_game"]  # one pointing game per model and method: the localisation block's
            block["figure"] = _figure(result, x[result.randomisation.example_index], METHOD_LABELS.get(name, name),
                                      out_dir / f"randomisation_{file_stem(name)}.png", run_dir, len(idx))
        except Exception as exc:  # noqa: BLE001 - one method's failure must not lose the others
            block = {"method": name, "error": f"{type(exc).__name__}: {exc}"}
            if echo:
                echo(f"error: explanation checks ({method}): {block['error']}")
        out.append(block)
    return out


def file_stem(method: str) -> str:
    """A file-name stem for a method name ("gradcam++" -> "gradcampp")."""
    return "".join(c if c.isalnum() or c in "_-" else "p" if c == "+" else "-" for c in method)
