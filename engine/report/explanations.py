"""Explanation reliability in the report (issue 18): the three checks of each backbone's explanation
methods in words, their cascade figures, a summary-table cell, the most faithful method, and the
first-page sentence where localisation is near chance. Reads only results.json's ``explanations``
blocks (docs/explanations.md); the verdicts were made by the explain stage, this only words them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.report.values import backbone_display

from engine.results import METHOD_LABELS, number as _num


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
    return METHOD_LABELS.get(str(method), str(method))


def _f(value: Any, digits: int = 2) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:.{digits}f}"


def _blocks(backbone: dict) -> list[dict]:
    return [b for b in backbone.get("explanations") or [] if isinstance(b, dict) and b.get("method")]


def _game(block: dict) -> dict | None:
    game = block.get("pointing_game")
    return game if isinstance(game, dict) and game.get("total") else None


def localisation_sentence(block: dict) -> str:
    game = _game(block)
    if game is None:
        return "Localisation: not measured, because no checked test image has a tumour box."
    beats = (game.get("beats_chance") or {}).get("rate")
    verdict = ("above chance (its 95 % interval lies above the chance level)" if beats else
               "not distinguishable from chance (its 95 % interval reaches the chance level)" if beats is False else "")
    return (f"Localisation: the map's peak fell inside the tumour box on {game.get('hits')} of {game.get('total')} "
            f"images (hit rate {_f(game.get('rate'))}; a random peak would hit {_f(game.get('chance_rate'))}), within "
            f"{_f(game.get('tolerance_px'), 0)} px of it (at the original resolution) on {_f(game.get('tolerant_rate'))}, "
            f"and {_f(game.get('energy'))} of the map's mass lay inside the box"
            + (f": {verdict}." if verdict else "."))


def randomisation_sentence(block: dict) -> str:
    r = block.get("randomisation") or {}
    steps = [str(s.get("name")) for s in r.get("steps") or [] if isinstance(s, dict)]
    what = f" ({', '.join(steps)})" if steps else ""
    threshold = _f(r.get("threshold", 0.5), 1)
    head = (f"Randomisation: after re-initialising the weights from the top down{what}, the maps' median Spearman "
            f"correlation with the trained model's maps was {_f(r.get('spearman_median'))} (SSIM "
            f"{_f(r.get('ssim_median'))}); ")
    if r.get("passed") is True:
        return head + f"below {threshold}, so the maps depend on what the model learned."
    return head + (f"not below {threshold}, so the maps barely change when what the model learned is destroyed: "
                   "they do not explain this model.")


def _deletion_beats(f: dict) -> bool:
    beats = f.get("beats") or {}
    return bool(beats.get("random_deletion")) and bool(beats.get("centre_deletion"))


def faithfulness_sentence(block: dict) -> str:
    f = block.get("faithfulness") or {}
    beats = f.get("beats") or {}
    lost = [name for key, name in (("random_deletion", "the random map on deletion"),
                                   ("random_insertion", "the random map on insertion"),
                                   ("centre_deletion", "the centre-weighted map on deletion"),
                                   ("centre_insertion", "the centre-weighted map on insertion")) if not beats.get(key)]
    verdict = ("it beats both baselines on both curves" if not lost else
               "it does not clearly beat " + " or ".join(lost))
    return (f"Faithfulness: deleting the most salient pixels first drove the class probability down with area under "
            f"the curve {_f(f.get('deletion_auc'))} (random map {_f(f.get('random_deletion_auc'))}, centre-weighted "
            f"map {_f(f.get('centre_deletion_auc'))}; lower is more faithful) and revealing them first gave "
            f"{_f(f.get('insertion_auc'))} ({_f(f.get('random_insertion_auc'))}, {_f(f.get('centre_insertion_auc'))}; "
            f"higher is more faithful): {verdict}.")


def explanation_views(backbone: dict) -> list[ExplanationView]:
    out = []
    for block in _blocks(backbone):
        name = label(block["method"])
        if block.get("error"):
            out.append(ExplanationView(name, error=str(block["error"])))
            continue
        fig = block.get("figure") if isinstance(block.get("figure"), dict) else None
        figure = ExplanationFigure(str(fig["path"]), str(fig.get("alt", "")), str(fig.get("caption", ""))) \
            if fig and fig.get("path") else None
        out.append(ExplanationView(name, localisation_sentence(block), randomisation_sentence(block),
                                   faithfulness_sentence(block), figure))
    return out


def _margin(block: dict) -> float | None:
    """Insertion minus deletion AUC: high when revealing the salient pixels restores the prediction
    and removing them destroys it."""
    f = block.get("faithfulness") or {}
    ins, dele = _num(f.get("insertion_auc")), _num(f.get("deletion_auc"))
    return None if ins is None or dele is None else ins - dele


def most_faithful(backbone: dict) -> str | None:
    """'Most faithful of the N methods: X (insertion minus deletion AUC 0.45; Y 0.30).', with two or more."""
    scored = [(b, _margin(b)) for b in _blocks(backbone) if not b.get("error")]
    scored = [(b, m) for b, m in scored if m is not None]
    if len(scored) < 2:
        return None
    scored.sort(key=lambda bm: -bm[1])
    best, rest = scored[0], scored[1:]
    return (f"Most faithful of the {len(scored)} methods: {label(best[0]['method'])} (insertion minus deletion AUC "
            f"{best[1]:.2f}; " + ", ".join(f"{label(b['method'])} {m:.2f}" for b, m in rest) + ").")


def summary_cell(backbone: dict) -> str | None:
    """The summary table's cell: per method, pointing game against chance and the two verdicts."""
    parts = []
    for block in _blocks(backbone):
        name = label(block["method"])
        if block.get("error"):
            parts.append(f"{name}: checks failed")
            continue
        game = _game(block)
        pointing = (f"pointing game {_f(game.get('rate'))} (chance {_f(game.get('chance_rate'))})" if game
                    else "no boxes")
        rand = "randomisation passed" if (block.get("randomisation") or {}).get("passed") else "randomisation FAILED"
        faith = ("beats baselines" if (block.get("faithfulness") or {}).get("beats_baselines")
                 else "does not beat baselines")
        parts.append(f"{name}: {pointing}; {rand}; {faith}")
    return "; ".join(parts) or None


def near_chance_sentence(backbone: dict) -> str | None:
    """The first-page sentence for a backbone whose primary method localises near chance: are the maps
    unfaithful, or does the model rely on regions outside the tumour?"""
    blocks = [b for b in _blocks(backbone) if not b.get("error")]
    if not blocks or _game(blocks[0]) is None:
        return None
    block, game = blocks[0], _game(blocks[0])
    if (game.get("beats_chance") or {}).get("rate") is not False:
        return None
    name, who = label(block["method"]), backbone_display(backbone)
    head = (f"{who}: the {name} maps point at the tumour no better than chance (hit rate {_f(game.get('rate'))}, "
            f"chance {_f(game.get('chance_rate'))}). ")
    rand_ok = (block.get("randomisation") or {}).get("passed") is True
    del_ok = _deletion_beats(block.get("faithfulness") or {})
    if not rand_ok or not del_ok:
        why = [w for w, bad in (("they barely change when the learned weights are randomised", not rand_ok),
                                ("deleting their most salient pixels hurts the prediction no more than the "
                                 "baselines do", not del_ok)) if bad]
        return head + ("The maps themselves are unfaithful (" + " and ".join(why) +
                       "), so they do not show where the model looks.")
    return head + ("The maps pass the randomisation and deletion checks, so they do reflect the model: it relies on "
                   "regions outside the tumour.")
