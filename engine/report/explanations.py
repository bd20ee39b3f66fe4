"""Explanation reliability in the report (issue 18): the three checks of each backbone's explanation
methods in words, their cascade figures, a summary-table cell, the most faithful method, and the
first-page sentence where localisation is near chance. Reads only results.json's ``explanations``
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


def label(method: Any) -> str:
    return method_label(method)


def _f(value: Any, digits: int = 2) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:.{digits}f}"


def _blocks(backbone: BackboneResult) -> list[Explanation]:
    return [b for b in backbone.explanations or [] if isinstance(b, Explanation) and b.method]


def _game(block: Explanation) -> Localisation | None:
    game = block.pointing_game
    return game if isinstance(game, Localisation) and game.total else None


def localisation_sentence(block: Explanation) -> str:
    game = _game(block)
    if game is None:
        return "Localisation: not measured, because no checked test image has a tumour box."
    beats = game.rate_beats_chance
    verdict = ("above chance (its 95 % interval lies above the chance level)" if beats else
               "not distinguishable from chance (its 95 % interval reaches the chance level)" if beats is False else "")
    return (f"Localisation: the map's peak fell inside the tumour box on {game.hits} of {game.total} "
            f"images (hit rate {_f(game.rate)}; a random peak would hit {_f(game.chance_rate)}), within "
            f"{_f(game.tolerance_px, 0)} px of it (at the original resolution) on {_f(game.tolerant_rate)}, "
            f"and {_f(game.energy)} of the map's mass lay inside the box"
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
    for block in _blocks(as_backbone_result(backbone)):
        name = label(block.method)
        if block.error:
            out.append(ExplanationView(name, error=str(block.error)))
            continue
        fig = block.figure if isinstance(block.figure, Figure) else None
        figure = ExplanationFigure(str(fig.path), str(fig.alt or ""), str(fig.caption or "")) \
            if fig and fig.path else None
        out.append(ExplanationView(name, localisation_sentence(block), randomisation_sentence(block),
                                   faithfulness_sentence(block), figure))
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
    for block in _blocks(as_backbone_result(backbone)):
        name = label(block.method)
        if block.error:
            parts.append(f"{name}: checks failed")
            continue
        game = _game(block)
        pointing = (f"pointing game {_f(game.rate)} (chance {_f(game.chance_rate)})" if game
                    else "no boxes")
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
    if not blocks or _game(blocks[0]) is None:
        return None
    block, game = blocks[0], _game(blocks[0])
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
