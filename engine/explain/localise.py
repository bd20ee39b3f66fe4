"""Localisation of one model's explanations on every annotated image: one block per method.

``localise`` is the one computation behind every localisation number of a model on a data set (the
audit's test split, ``auditrun evaluate``'s folder): it explains the TRUE class of each annotated
tumour image (a seeded sample of at most ``max_images``), scores each map against the image's outline
(engine.explain.localisation) in chunks so memory stays bounded, and draws the best and worst
localised images with their outlines. Its ``localisation`` blocks are what the report, the gates and
``auditrun evaluate`` read; the randomisation and faithfulness checks keep their own, smaller sample.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.data import as_images
from engine.errors import InputError
from engine.explain.localisation import IOU_THRESHOLD, TOLERANCE_PX, TOP_PERCENT, score_maps, summarise
from engine.explain.reliability import file_stem
from engine.paths import relative_to_root
from engine.results import METHOD_LABELS

#: Images explained per call (bounded memory: a chunk's maps are scored, then dropped).
CHUNK = 64
#: Panels per row of the best/worst figure.
EXAMPLES = 3


def localisation_sample(outlines: Sequence, y: np.ndarray, seed: int, max_images: int,
                        skip_class: int | None = None) -> list[int]:
    """Indices of the annotated images scored: every one, or a seeded sample of ``max_images``
    (the pointing game's sample rule, ``numpy.random.default_rng([seed, 7])``); images of
    ``skip_class`` (no_tumor: nothing to outline) never are."""
    from engine.explain.gallery import boxed_sample

    marked = [o if o is not None and (skip_class is None or int(y[i]) != skip_class) else []
              for i, o in enumerate(outlines)]
    return boxed_sample(marked, seed, max_images)


def _explainer(method, model, layer: str | None, heatmaps: dict) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if method in heatmaps:
        return heatmaps[method]
    from engine.explain.methods import explainer, uses_target_layer

    explain = explainer(method, layer=layer if uses_target_layer(method) else None)
    return lambda x, cls: explain(model, x, cls)


def _layer(model, method, layer: str | None) -> str | None:
    from engine.explain.methods import uses_target_layer

    if model is None or not isinstance(method, str) or not uses_target_layer(method):
        return layer if model is None else None
    from engine.explain.gradcam import find_target_layer

    return find_target_layer(model, layer)


def _examples(rows: list[dict]) -> list[tuple[str, dict]]:
    """The best and worst localised rows by energy (ties: IoU, then the image's index)."""
    ranked = sorted(rows, key=lambda r: (-r["energy"], -r["iou"], r["index"]))
    n = min(EXAMPLES, len(ranked) // 2) if len(ranked) > 1 else len(ranked)
    best = ranked[:n]
    worst = ranked[::-1][:n] if len(ranked) > 1 else []
    return [("best", r) for r in best] + [("worst", r) for r in worst]


def _figure(explain, images, y, outlines, chosen, class_names, label: str, path: Path,
            run_dir: Path, block: dict) -> dict:
    from engine.explain.figures import localisation_figure

    idx = [r["index"] for _, r in chosen]
    x = np.asarray(images[np.array(idx)], dtype=np.float32)
    maps = explain(x, np.asarray(y)[idx])
    titles = [f"{class_names[int(y[r['index']])]}: energy {r['energy']:.2f}, IoU {r['iou']:.2f}" for _, r in chosen]
    rows = ["best"] + (["worst"] if any(rank == "worst" for rank, _ in chosen) else [])
    per_row = max(1, sum(rank == "best" for rank, _ in chosen))
    localisation_figure(x, maps, [outlines[i].mask(m.shape) for i, m in zip(idx, maps)], titles, rows, path, per_row)

    def listed(rank):
        return "; ".join(f"{class_names[int(y[r['index']])]} (energy {r['energy']:.2f}, IoU {r['iou']:.2f}, peak "
                         f"{'inside' if r['hit'] else 'outside'})" for k, r in chosen if k == rank)

    alt = (f"{label} maps of annotated images with the tumour outline drawn in orange; top row the {per_row} best "
           f"localised images: {listed('best')}" + (f"; bottom row the worst: {listed('worst')}" if len(rows) > 1 else "")
           + ".")
    caption = (f"{label}: best and worst localised of {block['total']} annotated images (ranked by the share of the "
               f"map's mass inside the outline). Over all {block['total']}: energy {block['energy']:.2f} (chance "
               f"{block['chance']['random']['energy']:.2f}, centre-weighted map {block['chance']['centre']['energy']:.2f}), "
               f"IoU {block['iou']:.2f} (centre {block['chance']['centre']['iou']:.2f}), peak inside the outline on "
               f"{block['hits']} of {block['total']}.")
    return {"path": relative_to_root(path, run_dir), "alt": alt, "caption": caption}


def localise(model, images, y: np.ndarray, outlines: Sequence, methods: Sequence, seed: int, out_dir: Path | str,
             run_dir: Path | str, *, class_names: Sequence[str], names: Sequence[str],
             original_sizes: Sequence | None = None, layer: str | None = None, max_images: int = 500,
             skip_class: int | None = None, tolerance_px: float = TOLERANCE_PX, top_percent: float = TOP_PERCENT,
             iou_threshold: float = IOU_THRESHOLD, heatmaps: dict | None = None, n_boot: int = 1000,
             echo=None) -> list[dict]:
    """One ``localisation`` block per method (primary first); [] when no image has an outline.

    Args:
        model: the trained classifier (None for a model explained only through ``heatmaps``).
        images: (n, H, W, 3) RGB 0..255 at the model input (an ndarray or engine.data.DiskImages).
        y: (n,) true class indices; outlines: (n,) engine.data.annotations.Outline or None.
        methods: method names (engine.explain.methods.METHODS); heatmaps: {method: (images, classes)
            -> maps} for a method computed elsewhere (an imported model's adapter, the cluster's workers).
        names: (n,) how blocks name each image; original_sizes: (n,) (height, width) or None, for
            the tolerant game; out_dir: where ``localisation_<method>.png`` goes.

    A block holds the scores of engine.explain.localisation.summarise, ``method``, ``layer``,
    ``explained_class`` "true", ``n_annotated`` (annotated tumour images), ``n_images`` (scored),
    ``sample_limit``, ``sampled``, ``annotation_kinds``, ``examples`` (best and worst), ``figure``
    and ``seconds``; a method that fails gives ``{"method", "error"}`` and the others still run.
    """
    from engine.data.annotations import as_outline

    heatmaps = heatmaps or {}
    outlines = [as_outline(o) for o in outlines]
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    y = np.asarray(y, dtype=np.int64)
    images = as_images(images)
    n_annotated = len(localisation_sample(outlines, y, seed, len(y) + 1, skip_class))
    sample = localisation_sample(outlines, y, seed, max_images, skip_class)
    if not sample:
        return []
    kinds: dict[str, int] = {}
    for i in sample:
        kinds[outlines[i].kind] = kinds.get(outlines[i].kind, 0) + 1
    blocks = []
    for method in methods:
        name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
        label = METHOD_LABELS.get(name, name)
        t0 = time.perf_counter()
        try:
            explain = _explainer(method, model, layer, heatmaps)
            rows = []
            for start in range(0, len(sample), CHUNK):
                idx = np.array(sample[start:start + CHUNK])
                maps = explain(np.asarray(images[idx], dtype=np.float32), y[idx])
                rows += score_maps(maps, [outlines[i] for i in idx],
                                   [original_sizes[i] for i in idx] if original_sizes is not None else None,
                                   tolerance_px=tolerance_px, top_percent=top_percent, iou_threshold=iou_threshold,
                                   seed=seed, indices=idx)
                if echo:
                    echo(f"  localisation ({label}): {len(rows)} of {len(sample)} images")
            seconds = {"maps_and_scores": time.perf_counter() - t0}
            block = {"method": name, "layer": _layer(model, method, layer), "explained_class": "true",
                     "n_annotated": n_annotated, "n_images": len(sample), "sample_limit": int(max_images),
                     "sampled": len(sample) < n_annotated, "annotation_kinds": dict(sorted(kinds.items())),
                     **summarise(rows, tolerance_px=tolerance_px, top_percent=top_percent,
                                 iou_threshold=iou_threshold, seed=seed, n_boot=n_boot,
                                 classes=[int(y[r["index"]]) for r in rows], class_names=class_names)}
            chosen = _examples(rows)
            block["examples"] = [{"image": names[r["index"]], "class": class_names[int(y[r["index"]])], "rank": rank,
                                  **{k: r[k] for k in ("hit", "tolerant_hit", "energy", "coverage", "iou")}}
                                 for rank, r in chosen]
            t1 = time.perf_counter()
            block["figure"] = _figure(explain, images, y, outlines, chosen, class_names, label,
                                      out_dir / f"localisation_{file_stem(name)}.png", run_dir, block)
            seconds["figure"] = time.perf_counter() - t1
            block["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        except InputError:
            raise  # a setting that cannot work (a layer the model lacks) is the user's to fix: exit 2
        except Exception as exc:  # noqa: BLE001 - one method's failure must not lose the others
            block = {"method": name, "error": f"{type(exc).__name__}: {exc}"}
            if echo:
                echo(f"error: localisation ({name}): {block['error']}")
        blocks.append(block)
    return blocks
