"""Explanations in the report: localisation on the tumour outlines (issue 30: one table per method
with n, intervals and chance values, and the best/worst figure), the randomisation and faithfulness
checks in words with their cascade figures (issue 18), a summary-table cell, the most faithful
method, and the first-page sentence per model: the maps look at the tumour, look elsewhere, or
localisation was not measured. Reads only results.json's ``localisation`` and ``explanations``
blocks (docs/explanations.md); the verdicts were made by the explain stage, this only words them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.report.values import backbone_display

from engine.results import (BackboneResult, CascadeStep, Explanation, Faithfulness, Figure, Localisation,
                            Randomisation, as_backbone_result, method_label, number as _num)


@dataclass(frozen=True)
class ExplanationFigure:
    path: str
    alt: str
    caption: str


@dataclass(frozen=True)
class ExplanationView:
    """One method's checks: a sentence per check, the cascade figure, or why they failed."""

    method: str
    localisation: str | None = None
    randomisation: str | None = None
    faithfulness: str | None = None
    figure: ExplanationFigure | None = None
    error: str | None = None
    #: the images the randomisation and faithfulness checks ran on (their own sample)
    n_images: int | None = None


def label(method: Any) -> str:
    return method_label(method)


def _f(value: Any, digits: int = 2) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:.{digits}f}"


def _blocks(backbone: BackboneResult) -> list[Explanation]:
    return [b for b in backbone.explanations or [] if isinstance(b, Explanation) and b.method]


def _localisations(backbone: BackboneResult) -> list[Localisation]:
    return [b for b in backbone.localisation or [] if isinstance(b, Localisation) and b.method]


def localisation_of(backbone: BackboneResult, method: str | None) -> Localisation | None:
    """The model's one localisation of ``method`` with scored images: its ``localisation`` block, or,
    for a run before issue 30, the checks' own ``pointing_game``."""
    for loc in _localisations(backbone):
        if loc.method == method:
            return loc if not loc.error and loc.total else None
    block = next((b for b in _blocks(backbone) if b.method == method), None)
    game = block.pointing_game if block is not None else None
    return game if isinstance(game, Localisation) and game.total else None


def _game(block: Explanation, backbone: BackboneResult) -> Localisation | None:
    return localisation_of(backbone, block.method)


def localisation_sentence(block: Explanation, backbone: BackboneResult | None = None) -> str:
    game = localisation_of(backbone, block.method) if backbone is not None else \
        (block.pointing_game if isinstance(block.pointing_game, Localisation) and block.pointing_game.total else None)
    if game is None:
        return "Localisation: not measured, because no test image has a tumour outline."
    beats = game.rate_beats_chance
    verdict = ("above chance (its 95 % interval lies above the chance level)" if beats else
               "not distinguishable from chance (its 95 % interval reaches the chance level)" if beats is False else "")
    where = "outline" if game.coverage is not None else "box"
    return (f"Localisation: the map's peak fell inside the tumour {where} on {game.hits} of {game.total} "
            f"images (hit rate {_f(game.rate)}; a random peak would hit {_f(game.chance_rate)}), within "
            f"{_f(game.tolerance_px, 0)} px of it (at the original resolution) on {_f(game.tolerant_rate)}, "
            f"and {_f(game.energy)} of the map's mass lay inside the {where}"
            + (f": {verdict}." if verdict else "."))


def randomisation_sentence(block: Explanation) -> str:
    r = block.randomisation or Randomisation.from_json({})
    steps = [str(s.name) for s in r.steps if isinstance(s, CascadeStep)]
    what = f" ({', '.join(steps)})" if steps else ""
    threshold = _f(r.pass_threshold, 1)
    head = (f"Randomisation: after re-initialising the weights from the top down{what}, the maps' median Spearman "
            f"correlation with the trained model's maps was {_f(r.spearman_median)} (SSIM "
            f"{_f(r.ssim_median)}); ")
    if r.passed is True:
        return head + f"below {threshold}, so the maps depend on what the model learned."
    return head + (f"not below {threshold}, so the maps barely change when what the model learned is destroyed: "
                   "they do not explain this model.")


def _deletion_beats(f: Faithfulness) -> bool:
    return f.beat("random_deletion") and f.beat("centre_deletion")


def faithfulness_sentence(block: Explanation) -> str:
    f = block.faithfulness or Faithfulness()
    lost = [name for key, name in (("random_deletion", "the random map on deletion"),
                                   ("random_insertion", "the random map on insertion"),
                                   ("centre_deletion", "the centre-weighted map on deletion"),
                                   ("centre_insertion", "the centre-weighted map on insertion")) if not f.beat(key)]
    verdict = ("it beats both baselines on both curves" if not lost else
               "it does not clearly beat " + " or ".join(lost))
    return (f"Faithfulness: deleting the most salient pixels first drove the class probability down with area under "
            f"the curve {_f(f.deletion_auc)} (random map {_f(f.random_deletion_auc)}, centre-weighted "
            f"map {_f(f.centre_deletion_auc)}; lower is more faithful) and revealing them first gave "
            f"{_f(f.insertion_auc)} ({_f(f.random_insertion_auc)}, {_f(f.centre_insertion_auc)}; "
            f"higher is more faithful): {verdict}.")


def explanation_views(backbone: BackboneResult | dict) -> list[ExplanationView]:
    out = []
    backbone = as_backbone_result(backbone)
    for block in _blocks(backbone):
        name = label(block.method)
        if block.error:
            out.append(ExplanationView(name, error=str(block.error)))
            continue
        fig = block.figure if isinstance(block.figure, Figure) else None
        figure = ExplanationFigure(str(fig.path), str(fig.alt or ""), str(fig.caption or "")) \
            if fig and fig.path else None
        out.append(ExplanationView(name, localisation_sentence(block, backbone), randomisation_sentence(block),
                                   faithfulness_sentence(block), figure, n_images=block.n_images))
    return out


def _margin(block: Explanation) -> float | None:
    """Insertion minus deletion AUC: high when revealing the salient pixels restores the prediction
    and removing them destroys it."""
    f = block.faithfulness or Faithfulness()
    ins, dele = _num(f.insertion_auc), _num(f.deletion_auc)
    return None if ins is None or dele is None else ins - dele


def most_faithful(backbone: BackboneResult | dict) -> str | None:
    """'Most faithful of the N methods: X (insertion minus deletion AUC 0.45; Y 0.30).', with two or more."""
    scored = [(b, _margin(b)) for b in _blocks(as_backbone_result(backbone)) if not b.error]
    scored = [(b, m) for b, m in scored if m is not None]
    if len(scored) < 2:
        return None
    scored.sort(key=lambda bm: -bm[1])
    best, rest = scored[0], scored[1:]
    return (f"Most faithful of the {len(scored)} methods: {label(best[0].method)} (insertion minus deletion AUC "
            f"{best[1]:.2f}; " + ", ".join(f"{label(b.method)} {m:.2f}" for b, m in rest) + ").")


def summary_cell(backbone: BackboneResult | dict) -> str | None:
    """The summary table's cell: per method, pointing game against chance and the two verdicts."""
    parts = []
    backbone = as_backbone_result(backbone)
    for block in _blocks(backbone):
        name = label(block.method)
        if block.error:
            parts.append(f"{name}: checks failed")
            continue
        game = _game(block, backbone)
        pointing = (f"pointing game {_f(game.rate)} (chance {_f(game.chance_rate)}, n = {game.total})" if game
                    else "no outlines")
        rand = "randomisation passed" if block.randomisation and block.randomisation.passed else "randomisation FAILED"
        faith = ("beats baselines" if block.faithfulness and block.faithfulness.beats_baselines
                 else "does not beat baselines")
        parts.append(f"{name}: {pointing}; {rand}; {faith}")
    return "; ".join(parts) or None


def near_chance_sentence(backbone: BackboneResult | dict) -> str | None:
    """The first-page sentence for a backbone whose primary method localises near chance: are the maps
    unfaithful, or does the model rely on regions outside the tumour?"""
    backbone = as_backbone_result(backbone)
    blocks = [b for b in _blocks(backbone) if not b.error]
    if not blocks or _game(blocks[0], backbone) is None:
        return None
    block, game = blocks[0], _game(blocks[0], backbone)
    if game.rate_beats_chance is not False:
        return None
    name, who = label(block.method), backbone_display(backbone)
    head = (f"{who}: the {name} maps point at the tumour no better than chance (hit rate {_f(game.rate)}, "
            f"chance {_f(game.chance_rate)}). ")
    rand_ok = block.randomisation is not None and block.randomisation.passed is True
    del_ok = _deletion_beats(block.faithfulness or Faithfulness())
    if not rand_ok or not del_ok:
        why = [w for w, bad in (("they barely change when the learned weights are randomised", not rand_ok),
                                ("deleting their most salient pixels hurts the prediction no more than the "
                                 "baselines do", not del_ok)) if bad]
        return head + ("The maps themselves are unfaithful (" + " and ".join(why) +
                       "), so they do not show where the model looks.")
    return head + ("The maps pass the randomisation and deletion checks, so they do reflect the model: it relies on "
                   "regions outside the tumour.")


# --------------------------------------------------------------------------------------------
# Localisation on the tumour outlines (issue 30)
# --------------------------------------------------------------------------------------------

#: The table's rows: (score key, what it measures).
SCORE_ROWS = (("rate", "Pointing game (strict): peak inside the outline"),
              ("tolerant_rate", "Pointing game (tolerant): peak within {tol} px of it"),
              ("energy", "Energy: share of the map's mass inside the outline"),
              ("coverage", "Coverage: share of the outline in the map's top {top} % pixels"),
              ("iou", "IoU: map above {thr} of its maximum against the outline"))


@dataclass(frozen=True)
class LocalisationRow:
    score: str
    value: str
    interval: str
    random: str
    centre: str
    beats: str


@dataclass(frozen=True)
class LocalisationView:
    """One method's localisation table, its sample in words, and the best/worst figure."""

    method: str
    sample: str = ""
    rows: tuple[LocalisationRow, ...] = ()
    figure: ExplanationFigure | None = None
    error: str | None = None


def _ci(pair) -> str:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(_num(v) is None for v in pair):
        return "n/a"
    return f"{_num(pair[0]):.2f}–{_num(pair[1]):.2f}"


def _beats(loc: Localisation, score: str) -> str:
    chance = (loc.beats_chance or {}).get(score) if isinstance(loc.beats_chance, dict) else None
    centre = (loc.beats_centre or {}).get(score) if isinstance(loc.beats_centre, dict) else None
    if chance is None:
        return "n/a"
    if chance and centre:
        return "above both"
    if chance:
        return "above random only" if centre is False else "above random"
    return "no"


def _sample_text(loc: Localisation) -> str:
    plural = {"box": "boxes", "polygon": "polygons", "mask": "masks"}
    kinds = ", ".join(f"{n} {k if n == 1 else plural.get(k, k)}" for k, n in sorted((loc.annotation_kinds or {}).items()))
    n, total = loc.n_images if loc.n_images is not None else loc.total, loc.n_annotated
    if loc.sampled and total:
        head = f"{n} of the {total} annotated tumour test images, a sample drawn with the run's seed (the limit is {loc.sample_limit})"
    else:
        head = f"all {n} annotated tumour test images"
    return (f"Scored on {head}" + (f" ({kinds})" if kinds else "") +
            ", explaining the true class. Intervals are 95 % percentile-bootstrap intervals over the images; a score "
            "counts as above a chance value when its whole interval lies above it.")


def localisation_views(backbone: BackboneResult | dict) -> list[LocalisationView]:
    """The localisation tables of the model's methods (primary first)."""
    out = []
    for loc in _localisations(as_backbone_result(backbone)):
        name = label(loc.method)
        if loc.error:
            out.append(LocalisationView(name, error=str(loc.error)))
            continue
        if not loc.total:
            continue
        random = (loc.chance or {}).get("random") or {}
        centre = (loc.chance or {}).get("centre") or {}
        rows = tuple(LocalisationRow(
            what.format(tol=_f(loc.tolerance_px, 0), top=_f(loc.coverage_top_percent, 0), thr=_f(loc.iou_threshold, 1)),
            _f(getattr(loc, key)), _ci(getattr(loc, f"{key}_ci")), _f(random.get(key)), _f(centre.get(key)),
            _beats(loc, key)) for key, what in SCORE_ROWS)
        fig = loc.figure if isinstance(loc.figure, Figure) and loc.figure.path else None
        figure = ExplanationFigure(str(fig.path), str(fig.alt or ""), str(fig.caption or "")) if fig else None
        out.append(LocalisationView(name, _sample_text(loc), rows, figure))
    return out


def localisation_line(backbone: BackboneResult | dict) -> tuple[str, str]:
    """(verdict, sentence) for the first page: "tumour" (the primary method's energy interval lies
    above both the random and the centre-weighted map's, and its strict pointing game's above
    random), "elsewhere" (measured, and not so), or "not measured" (no test image has an outline)."""
    backbone = as_backbone_result(backbone)
    who = backbone_display(backbone)
    blocks = [b for b in _blocks(backbone) if not b.error]
    primary = (_localisations(backbone) or blocks or [None])[0]
    loc = localisation_of(backbone, primary.method) if primary is not None else None
    if loc is None:
        return "not measured", (f"{who}: localisation not measured: no test image has a tumour outline, so the "
                                "report cannot say whether the maps look at the tumour.")
    name = label(primary.method)
    centre = ((loc.chance or {}).get("centre") or {}).get("energy")
    numbers = (f"{_f(loc.energy)} of the map's mass inside the outline (random map {_f(loc.chance_rate)}"
               + (f", centre-weighted map {_f(centre)}" if centre is not None else "")
               + f"), peak inside it on {loc.hits} of {loc.total} images")
    chance = loc.beats_chance if isinstance(loc.beats_chance, dict) else {}
    # a run before issue 30 had no centre-weighted map: it is judged against the random one alone
    centre_ok = loc.beats_centre.get("energy") if isinstance(loc.beats_centre, dict) else loc.coverage is None
    if chance.get("energy") and chance.get("rate") and centre_ok:
        return "tumour", f"{who}: the {name} maps look at the tumour: {numbers}."
    return "elsewhere", near_chance_sentence(backbone) or (
        f"{who}: the {name} maps look elsewhere than the tumour: {numbers}; their energy and pointing game do not "
        "both lie clearly above what maps that know nothing score.")
