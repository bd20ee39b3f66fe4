"""The randomisation-cascade figure: one image's map, trained and after each randomisation step.

Panels left to right: the image, the trained model's map, then the map after "head randomised",
"top randomised", ... Maps use viridis (perceptually uniform, readable with the common colour-vision
deficiencies and in greyscale), all on one 0..1 scale; each panel's title gives its Spearman
correlation and SSIM with the trained map, and the function returns those numbers for the alt text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engine.explain.gallery import as_grey, new_figure, save_figure
from engine.explain.randomisation import RandomisationResult
from engine.explain.similarity import spearman, ssim


def cascade_panels(result: RandomisationResult) -> tuple[list[str], np.ndarray]:
    """Panel labels and maps (trained first) of ``result``'s example image."""
    labels = ["trained"] + [f"{step.name} randomised" for step in result.steps]
    return labels, np.asarray(result.example_maps)


def randomisation_cascade_figure(image: np.ndarray, maps: np.ndarray, labels: Sequence[str], path: Path | str,
                                 method: str = "Grad-CAM") -> dict:
    """Write the cascade PNG to ``path``; return its numbers and alt text.

    Args:
        image: (H, W) or (H, W, 3) 0..255, the image the maps explain.
        maps: (k + 1, H, W) in [0, 1]: the trained model's map, then after each cascade step.
        labels: k + 1 panel names ("trained", "head randomised", ...).

    Returns ``{"steps": [{"label", "spearman", "ssim"}, ...], "alt": str}`` (the trained panel is
    compared with itself: 1.0, 1.0).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or len(maps) != len(labels) or len(maps) < 2:
        raise ValueError(f"need k + 1 >= 2 maps and as many labels; got {maps.shape} and {len(labels)}")
    steps = [{"label": str(lab), "spearman": round(spearman(maps[0], m), 3), "ssim": round(ssim(maps[0], m), 3)}
             for lab, m in zip(labels, maps)]
    side = 1.7
    fig = new_figure(side * (len(maps) + 1) + 0.6, side + 0.55)
    width = 1.0 / (len(maps) + 1.35)
    panels = [("image", None)] + list(zip(labels, maps))
    for k, (label, heat) in enumerate(panels):
        ax = fig.add_axes((0.01 + k * width, 0.02, width * 0.96, 0.74))
        ax.imshow(as_grey(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if heat is not None:
            im = ax.imshow(heat, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="bilinear")
            s = steps[k - 1]
            label = f"{label}\nρ={s['spearman']:.2f}  SSIM={s['ssim']:.2f}"
        ax.set_title(label, fontsize=7)
        ax.set_axis_off()
    cax = fig.add_axes((0.01 + len(panels) * width, 0.1, width * 0.1, 0.6))
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=6)
    save_figure(fig, Path(path))
    changes = "; ".join(f"{s['label']}: Spearman {s['spearman']:.2f}, SSIM {s['ssim']:.2f}" for s in steps[1:])
    alt = (f"{method} map of one image for the trained model and after cascading weight randomisation "
           f"({len(steps) - 1} steps). Similarity to the trained map: {changes}.")
    return {"steps": steps, "alt": alt}


#: Okabe-Ito orange, as the gallery's box outline: visible on viridis and on greyscale.
OUTLINE_COLOUR = "#E69F00"


def localisation_figure(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                        titles: Sequence[str], rows: Sequence[str], path: Path | str, per_row: int) -> None:
    """Write the best/worst localised images to ``path``: one row per entry of ``rows`` ("best",
    "worst"), ``per_row`` panels each. A panel is the greyscale image under the translucent viridis
    map, the tumour outline drawn solid orange, and a white "+" on the map's peak."""
    side = 1.7
    n_rows = len(rows)
    width = side * per_row + 0.4
    fig = new_figure(width, (side + 0.4) * n_rows)
    for k, (image, heat, mask, title) in enumerate(zip(images, maps, masks, titles)):
        row, col = divmod(k, per_row)
        height = 1.0 / n_rows
        ax = fig.add_axes(((0.4 + col * side) / width, 1 - (row + 1) * height + 0.02, 0.96 * side / width,
                           height * 0.8))
        ax.imshow(as_grey(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.imshow(heat, cmap="viridis", vmin=0.0, vmax=1.0, alpha=0.45, interpolation="bilinear")
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=1.4)
        if heat.max() > 0:
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            ax.plot([c], [r], marker="+", color="white", markersize=8, markeredgewidth=1.4)
        h, w = heat.shape
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(title, fontsize=6.5)
        ax.set_axis_off()
    for row, name in enumerate(rows):
        fig.text(0.01, 1 - (row + 0.5) / n_rows, name, rotation=90, va="center", fontsize=8)
    save_figure(fig, Path(path))
