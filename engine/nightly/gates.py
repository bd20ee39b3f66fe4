"""Regression gates: Deepchecks-style conditions that turn measured values into PASS / WARN / FAIL.

The manifest's ``[gates]`` section becomes :class:`GatesConfig`, defined here so that a new gate and its threshold key are one module's change.
Each gate is one function registered in :data:`GATES` with ``@register_gate(name, scope=...)``;
:func:`evaluate_gates` runs them on a run's typed results (``RunResults``; and the previous history record, for the
drop gate) and returns one :class:`GateResult` per gate and target; serialisers (dict for results.json, JUnit XML for CI, lines
for stderr) are separate functions so the result keeps its machine value apart from its display.

Gate names, usable in ``warn_only`` either exactly or by family (the part before the dot):

=======================  ==========================================================  ===========
name                     measured value                                              target
=======================  ==========================================================  ===========
all_backbones_finished   finished backbones / listed backbones (on by default)       run
min_accuracy             test accuracy                                               backbone
min_macro_f1             test macro-F1                                               backbone
min_recall.<class>       test recall of <class> (e.g. min_recall.glioma)             backbone
max_macro_f1_drop        previous run's test macro-F1 minus this run's               backbone
max_leakage_fraction     test images with a twin in training / test images           run
max_subgroup_gap         largest macro-F1 gap between two subgroups of an attribute  backbone
max_patient_leakage      patients with images in more than one split (a count)       run
min_pointing_game        pointing-game hit rate of the primary explanation method    backbone
explanation_sanity       maps depend on the learned weights (randomisation test)     backbone
=======================  ==========================================================  ===========

A gate whose value cannot be measured (a failed backbone, no best backbone, no integrity block)
FAILs, also when it is warn-only: a threshold may be advisory, an audit that did not measure is
broken. Two exceptions, where the data rather than the audit leaves nothing to measure: the
baseline of ``max_macro_f1_drop`` (with no previous run, or no previous result for that backbone,
there is nothing to drop from, and the gate PASSes saying so), ``min_recall.<class>`` for a
class with no test images, whose recall is undefined (docs/metrics.md): the gate WARNs "not
evaluated", never PASS (nothing was shown) nor FAIL (nothing was missed), and ``max_subgroup_gap``
for a backbone without a ``subgroup_gap`` block (no ``[subgroups]``, or no subgroup attributes in
the data) or without two subgroups large enough to compare: it WARNs "not evaluated" too, and
``max_patient_leakage`` when the data carry no patient ids (plain images: no patient to count), and
``min_pointing_game`` when no checked test image has a tumour box. ``explanation_sanity`` FAILs
when any method's maps pass for the model's although they do not depend on its learned weights
(``randomisation.passed`` false, docs/explanations.md), or when the checks did not run.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from engine.errors import InputError
from engine.nightly.history import leakage_counts
from engine.registry import Registry
from engine.results import (BackboneResult, BestBackbone, ClassMetrics, Explanation, Gradcam, HistoryRecord, Integrity,
                            LargestGap, Localisation, Metrics, Randomisation, RunResults, SubgroupGap, SubgroupSide,
                            as_history_record, as_run_results)
from engine.results import number as _num

#: Where a gate is evaluated: "first" once per run, before every backbone gate (the verdict on the
#: run as a whole leads the list), "backbone" once per gated backbone (``applies_to``), "run" once
#: per run after the backbone gates.
GateScope = Literal["first", "backbone", "run"]
STATUSES = ("PASS", "WARN", "FAIL")

#: Metrics from sklearn are exact ratios, but thresholds typed in TOML are decimal: 0.9 must pass 0.9.
_EPS = 1e-9


@dataclass(frozen=True)
class GateTarget:
    """One gated backbone: its name (None when there is none to gate), why its values cannot be
    measured ("" when they can), its ``test`` block (an empty one when unmeasurable) and its
    ``subgroup_gap`` block (None when absent or unmeasurable)."""

    backbone: str | None
    why: str
    test: Metrics = field(default_factory=Metrics)
    subgroup_gap: SubgroupGap | None = None
    #: the backbone's ``explanations`` list (None when absent or unmeasurable)
    explanations: list[Explanation] | None = None
    #: the backbone's whole results.json entry (None when unmeasurable), for a gate on any other block
    entry: BackboneResult | None = None

    @property
    def who(self) -> str:
        return self.backbone or "best backbone"


@dataclass(frozen=True)
class GateInput:
    """What a gate reads: the run's results, the previous comparable history record (None on the
    first run) and, for a "backbone" gate, the backbone it judges (None for the others)."""

    results: RunResults
    previous: HistoryRecord | None
    target: GateTarget | None = None


#: A gate: (input, config) -> its result(s); None (or []) when the manifest does not turn it on.
@dataclass
class GatesConfig:
    """``[gates]`` of the manifest. Every threshold is optional; an unset gate is not evaluated.

    min_accuracy, min_macro_f1: lowest acceptable test value, 0..1.
    min_recall: class -> lowest acceptable test recall, 0..1 (set it for the tumour classes: a missed
        tumour called no_tumor is the costly error).
    max_macro_f1_drop: largest acceptable fall of test macro-F1 against the previous comparable run.
    max_leakage_fraction: largest acceptable fraction of test images with an exact or near twin in
        training (integrity.cross_split_near / number of test images).
    max_subgroup_gap: largest acceptable macro-F1 gap between two subgroups (site, scanner, sex,
        age band) of one attribute: the backbone's ``subgroup_gap.largest.gap``
        (engine.evaluation.subgroups).
    max_patient_leakage: largest acceptable number of patients with images in more than one split
        (integrity.cross_split_patients; 0: no patient may have images in both training and test).
    min_pointing_game: lowest acceptable strict pointing-game hit rate (the heatmap's peak inside the
        tumour box, 0..1) of the first ``[gradcam] method``, from the backbone's ``explanations``.
    explanation_sanity: true FAILs a backbone whose explanation maps fail the model-parameter
        randomisation test for any method (the maps do not depend on the learned weights).
    warn_only: gate names or families that only WARN when violated (e.g. ["max_macro_f1_drop",
        "min_recall.meningioma"]).
    applies_to: "best" gates the backbone chosen on validation; "all" gates every listed backbone,
        and a failed one FAILs every per-backbone gate.
    """

    min_accuracy: float | None = None
    min_macro_f1: float | None = None
    min_recall: dict[str, float] = field(default_factory=dict)
    max_macro_f1_drop: float | None = None
    max_leakage_fraction: float | None = None
    max_subgroup_gap: float | None = None
    max_patient_leakage: int | None = None
    min_pointing_game: float | None = None
    explanation_sanity: bool = False
    warn_only: list[str] = field(default_factory=list)
    applies_to: Literal["best", "all"] = "best"
    #: Built in and on by default: a backbone that failed to train, evaluate or explain FAILs the
    #: run, so a nightly audit whose backbones all crashed can never exit 0.
    all_backbones_finished: bool = True

    def __post_init__(self) -> None:
        def unit(key: str, value: float | None) -> None:
            if value is not None and not (0.0 <= value <= 1.0):  # NaN fails the comparison too
                raise InputError(f"manifest key 'gates.{key}' must be between 0 and 1, got {value!r}")

        unit("min_accuracy", self.min_accuracy)
        unit("min_macro_f1", self.min_macro_f1)
        unit("max_macro_f1_drop", self.max_macro_f1_drop)
        unit("max_leakage_fraction", self.max_leakage_fraction)
        unit("max_subgroup_gap", self.max_subgroup_gap)
        unit("min_pointing_game", self.min_pointing_game)
        limit = self.max_patient_leakage
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InputError(f"manifest key 'gates.max_patient_leakage' must be a whole number of patients >= 0, "
                             f"got {limit!r}")
        for cls, value in self.min_recall.items():
            unit(f"min_recall.{cls}", value)
        gates = GATES
        for i, name in enumerate(self.warn_only):
            family, _, cls = name.partition(".")
            gate = gates.get(family)
            if gate is None or (cls and not gate.per_class):
                raise InputError(
                    f"manifest key 'gates.warn_only[{i}]': {name!r} is not a gate; use one of "
                    + ", ".join(gates) + "".join(f" or {g}.<class>" for g, e in gates.items() if e.per_class)
                )
        if self.applies_to not in ("best", "all"):
            raise InputError(f"manifest key 'gates.applies_to': {self.applies_to!r} is not allowed; "
                             "use 'best' or 'all'")

    def is_warn_only(self, name: str) -> bool:
        return name in self.warn_only or name.partition(".")[0] in self.warn_only




GateFunction = Callable[[GateInput, GatesConfig], "GateResult | Sequence[GateResult] | None"]


@dataclass(frozen=True)
class Gate:
    """A registered gate. ``per_class``: ``warn_only`` also takes ``name.<class>`` (min_recall)."""

    name: str
    evaluate: GateFunction
    scope: GateScope = "backbone"
    per_class: bool = False


#: Every gate in the order ``warn_only`` messages list them; within a scope, also the order of
#: evaluation and so of results.json, the report and JUnit.
GATES: Registry[Gate] = Registry("gate")
#: The gate names ``warn_only`` takes (a live view of GATES).
GATE_FAMILIES = GATES


def register_gate(name: str, *, scope: GateScope = "backbone", per_class: bool = False):
    """Decorator: register ``fn(inp: GateInput, config: GatesConfig)`` as gate ``name``."""
    if scope not in ("first", "backbone", "run"):
        raise ValueError(f"gate {name!r}: scope must be 'first', 'backbone' or 'run', got {scope!r}")

    def add(fn: GateFunction) -> GateFunction:
        GATES.add(name, Gate(name, fn, scope, per_class))
        return fn

    return add


@dataclass(frozen=True)
class GateResult:
    """One evaluated condition.

    ``value`` is None when it could not be measured: then the gate FAILs, except max_macro_f1_drop
    without a baseline, which PASSes with a message saying there was nothing to compare, and
    min_recall of a class with no test images and max_subgroup_gap without subgroup results or
    without two subgroups to compare, which WARN "not evaluated".
    """

    name: str
    backbone: str | None  # None for run-level gates (leakage)
    status: Literal["PASS", "WARN", "FAIL"]
    value: float | None
    threshold: float
    message: str

    @property
    def label(self) -> str:
        return f"{self.name}[{self.backbone}]" if self.backbone else self.name


# ------------------------------------------------------------------------------------------------
# Evaluation


# ------------------------------------------------------------------------------------------------
# Evaluation


def _finished(b: BackboneResult) -> bool:
    # an entry without a status did not finish: ``status`` reads "ok" only as a stand-in default
    return b.ok and b.has("status")


def _failure(b: BackboneResult) -> str:
    return f"backbone failed: {b.error or 'no error recorded'}"


def _targets(results: RunResults, config: GatesConfig) -> list[tuple[str | None, BackboneResult | None, str]]:
    """(backbone name, backbone entry or None, why it is unmeasurable or "") per gated backbone."""
    entries = {b.name: b for b in results.backbones}
    if config.applies_to == "all":
        if not entries:
            return [(None, None, "the run has no backbones")]
        return [(name, b, "" if _finished(b) else _failure(b)) for name, b in entries.items()]
    best = results.best_backbone.name if isinstance(results.best_backbone, BestBackbone) else None
    if not best:
        return [(None, None, "no best backbone was selected (did every backbone fail?)")]
    entry = results.backbone(best)
    if entry is None:
        return [(best, None, f"best backbone {best!r} is not among the run's backbones")]
    if not _finished(entry):
        return [(best, entry, _failure(entry))]
    return [(best, entry, "")]


def _target(backbone: str | None, entry: BackboneResult | None, why: str) -> GateTarget:
    if why or entry is None:
        return GateTarget(backbone, why)
    return GateTarget(backbone, why, entry.test if isinstance(entry.test, Metrics) else Metrics(),
                      entry.subgroup_gap, entry.explanations, entry)


def evaluate_gates(results: RunResults | dict, config: GatesConfig,
                   previous: HistoryRecord | dict | None) -> list[GateResult]:
    """Evaluate every configured gate on ``results`` (``RunResults`` or results.json's dict, schema version 1).

    ``previous``: the previous comparable history record (engine.nightly.history.previous_record), or None
    on the first run. Returns results in a stable order, the registration order of GATES within each
    scope: all_backbones_finished; then per target backbone, accuracy, macro-F1, recall per class
    (manifest order), drop, subgroup gap, pointing game, explanation sanity; then the run-level
    leakage gates (images, then patients).
    """
    inp = GateInput(as_run_results(results), as_history_record(previous) if previous is not None else None)
    out = _evaluate([g for g in GATES.values() if g.scope == "first"], inp, config)
    per_backbone = [g for g in GATES.values() if g.scope == "backbone"]
    for backbone, entry, why in _targets(inp.results, config):
        out += _evaluate(per_backbone, dataclasses.replace(inp, target=_target(backbone, entry, why)), config)
    out += _evaluate([g for g in GATES.values() if g.scope == "run"], inp, config)
    return out


def _evaluate(gates: Sequence[Gate], inp: GateInput, config: GatesConfig) -> list[GateResult]:
    out: list[GateResult] = []
    for gate in gates:
        found = gate.evaluate(inp, config)
        if isinstance(found, GateResult):
            out.append(found)
        elif found:
            out.extend(found)
    return out


def _judged(config: GatesConfig, name: str, backbone: str | None, value: float | None, threshold: float,
            ok: bool, message: str) -> GateResult:
    """FAIL when ``value`` is unmeasured, PASS when ``ok``, else FAIL or (``warn_only``) WARN."""
    if value is None:
        status = "FAIL"
    elif ok:
        status = "PASS"
    else:
        status = "WARN" if config.is_warn_only(name) else "FAIL"
    if status == "WARN":
        message += " (warn only)"
    return GateResult(name, backbone, status, value, float(threshold), message)


def _minimum_gate(target: GateTarget, config: GatesConfig, name: str, what: str, value,
                  threshold: float) -> GateResult:
    value = _num(value)
    who = target.who
    if value is None:
        msg = f"{who} {what} is missing ({target.why or 'not in results'}); minimum {threshold:.3f}"
    elif value + _EPS >= threshold:
        msg = f"{who} {what} {value:.3f} meets the minimum {threshold:.3f}"
    else:
        msg = f"{who} {what} {value:.3f} is below the minimum {threshold:.3f}"
    return _judged(config, name, target.backbone, value, threshold, value is not None and value + _EPS >= threshold,
                   msg)


def _recall_gate(target: GateTarget, config: GatesConfig, cls: str, threshold: float) -> GateResult:
    entry = target.test.of_class(cls) or ClassMetrics()
    if entry.support == 0:
        # undefined recall (older results.json stored it as 0.0): judge by the support
        return GateResult(f"min_recall.{cls}", target.backbone, "WARN", None, float(threshold),
                          f"{target.who}: not evaluated (no test images of class {cls}); minimum {threshold:.3f}")
    return _minimum_gate(target, config, f"min_recall.{cls}", f"test recall of {cls}", entry.recall,
                         threshold)


# Registered gates, in the order of GATES (see register_gate).


@register_gate("all_backbones_finished", scope="first")
def _all_finished(inp: GateInput, config: GatesConfig) -> GateResult | None:
    """PASS when every listed backbone trained, evaluated and explained; else FAIL naming the errors."""
    if not config.all_backbones_finished:
        return None
    entries = inp.results.backbones
    broken = [(b.name, b.error or "no error recorded") for b in entries if not _finished(b)]
    broken += [(b.name, f"explanations failed: {b.gradcam.error}") for b in entries
               if _finished(b) and isinstance(b.gradcam, Gradcam) and b.gradcam.error]
    finished = len(entries) - len({name for name, _ in broken})
    if not entries:
        message, ok = "the run has no backbone results", False
    elif not broken:
        message, ok = f"all {len(entries)} backbones finished", True
    else:
        message, ok = (f"{len(broken)} of {len(entries)} backbones did not finish: "
                       + "; ".join(f"{name}: {error}" for name, error in broken)), False
    status = "PASS" if ok else ("WARN" if config.is_warn_only("all_backbones_finished") else "FAIL")
    if status == "WARN":
        message += " (warn only)"
    value = finished / len(entries) if entries else 0.0
    return GateResult("all_backbones_finished", None, status, value, 1.0, message)


@register_gate("min_accuracy")
def _min_accuracy(inp: GateInput, config: GatesConfig) -> GateResult | None:
    if config.min_accuracy is None:
        return None
    return _minimum_gate(inp.target, config, "min_accuracy", "test accuracy", inp.target.test.accuracy,
                         config.min_accuracy)


@register_gate("min_macro_f1")
def _min_macro_f1(inp: GateInput, config: GatesConfig) -> GateResult | None:
    if config.min_macro_f1 is None:
        return None
    return _minimum_gate(inp.target, config, "min_macro_f1", "test macro-F1", inp.target.test.macro_f1,
                         config.min_macro_f1)


@register_gate("min_recall", per_class=True)
def _min_recall(inp: GateInput, config: GatesConfig) -> list[GateResult]:
    """One min_recall.<class> per class of ``[gates.min_recall]``, in manifest order."""
    return [_recall_gate(inp.target, config, cls, threshold) for cls, threshold in config.min_recall.items()]


@register_gate("max_macro_f1_drop")
def _drop_gate(inp: GateInput, config: GatesConfig) -> GateResult | None:
    """max_macro_f1_drop of one target against its result in ``previous``."""
    if config.max_macro_f1_drop is None:
        return None
    target, previous = inp.target, inp.previous
    limit = config.max_macro_f1_drop
    backbone, who = target.backbone, target.who
    now = _num(target.test.macro_f1)
    before = previous.metric(backbone, "macro_f1") if previous is not None and backbone else None
    if now is None:
        return _judged(config, "max_macro_f1_drop", backbone, None, limit, False,
                       f"{who} test macro-F1 is missing ({target.why or 'not in results'}); "
                       f"allowed drop {limit:.3f}")
    if before is None:
        reason = "no previous run" if previous is None else \
            f"no previous result for {who} in run {previous.run_id}"
        return GateResult("max_macro_f1_drop", backbone, "PASS", None, float(limit),
                          f"{who}: {reason}; nothing to compare (macro-F1 now {now:.3f})")
    drop = before - now
    verb = f"fell by {drop:.3f}" if drop > 0 else f"did not fall (change {-drop:+.3f})"
    return _judged(config, "max_macro_f1_drop", backbone, drop, limit, drop <= limit + _EPS,
                   f"{who} test macro-F1 {verb}: {before:.3f} in run {previous.run_id} -> "
                   f"{now:.3f} now; allowed drop {limit:.3f}")


@register_gate("max_leakage_fraction", scope="run")
def _leakage_gate(inp: GateInput, config: GatesConfig) -> GateResult | None:
    """max_leakage_fraction: the run-level gate on test images with a twin in training."""
    if config.max_leakage_fraction is None:
        return None
    limit = config.max_leakage_fraction
    counts = leakage_counts(inp.results)
    if counts is None:
        return _judged(config, "max_leakage_fraction", None, None, limit, False,
                       "leakage fraction is unknown (no integrity block with cross_split_near, or no test "
                       f"images); allowed at most {limit:.1%}")
    near, n_test = counts
    fraction = near / n_test
    relation = "within" if fraction <= limit + _EPS else "above"
    return _judged(config, "max_leakage_fraction", None, fraction, limit, fraction <= limit + _EPS,
                   f"{fraction:.1%} of test images ({near} of {n_test}) have an exact or near twin in training; "
                   f"{relation} the allowed {limit:.1%}")


@register_gate("max_subgroup_gap")
def _subgroup_gap_gate(inp: GateInput, config: GatesConfig) -> GateResult | None:
    """max_subgroup_gap of one target: its largest macro-F1 gap between two subgroups of an attribute."""
    if config.max_subgroup_gap is None:
        return None
    target = inp.target
    name, limit, who = "max_subgroup_gap", config.max_subgroup_gap, target.who
    if target.why:
        return _judged(config, name, target.backbone, None, limit, False,
                       f"{who} subgroup gap is missing ({target.why}); allowed gap {limit:.3f}")
    block = target.subgroup_gap
    if not isinstance(block, SubgroupGap):
        return GateResult(name, target.backbone, "WARN", None, float(limit),
                          f"{who}: not evaluated (no subgroup results: set [subgroups] by, with site, scanner, "
                          f"sex or age in the data); allowed gap {limit:.3f}")
    largest = block.largest if isinstance(block.largest, LargestGap) else LargestGap()
    gap = _num(largest.gap)
    if gap is None:
        unavailable = [str(a) for a in block.unavailable or []]
        missing = f"no test image records {', '.join(unavailable)}; " if unavailable else ""
        return GateResult(name, target.backbone, "WARN", None, float(limit),
                          f"{who}: not evaluated ({missing}no attribute has two subgroups of at least "
                          f"{block.min_n if block.has('min_n') else '?'} test images); allowed gap {limit:.3f}")
    lo, hi = _num(largest.ci_low), _num(largest.ci_high)
    ci = f" [CI {lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""

    def side(s: SubgroupSide | None) -> str:
        s = s if isinstance(s, SubgroupSide) else SubgroupSide.from_json({})
        # a side without group or n names them "None", as it always has, not by a stand-in default
        group = s.group if s.has("group") else None
        f1 = _num(s.macro_f1)
        return f"{group} {f1:.3f} (n={s.n if s.has('n') else None})" if f1 is not None else str(group)

    ok = gap <= limit + _EPS
    relation = "within" if ok else "above"
    return _judged(config, name, target.backbone, gap, limit, ok,
                   f"{who} test macro-F1 differs by {gap:.3f}{ci} between {largest.attribute} groups "
                   f"{side(largest.higher)} and {side(largest.lower)}; {relation} the allowed gap {limit:.3f}")


#: Pseudonyms a patient-leakage gate message names (the integrity block lists up to 100).
_PATIENTS_NAMED = 5


@register_gate("max_patient_leakage", scope="run")
def _patient_leakage_gate(inp: GateInput, config: GatesConfig) -> GateResult | None:
    """max_patient_leakage: the run-level gate on patients with images in more than one split."""
    if config.max_patient_leakage is None:
        return None
    name, limit = "max_patient_leakage", config.max_patient_leakage
    integrity = inp.results.integrity
    count = integrity.cross_split_patients if isinstance(integrity, Integrity) else None
    if isinstance(count, bool) or not isinstance(count, int):
        return _judged(config, name, None, None, limit, False,
                       f"patients in more than one split are unknown (no integrity block with cross_split_patients); "
                       f"allowed at most {limit}")
    if not integrity.patients:
        return GateResult(name, None, "WARN", None, float(limit),
                          f"not evaluated (no image carries a patient id, e.g. plain images without DICOM headers); "
                          f"allowed at most {limit}")
    ids = [str(i) for i in integrity.cross_split_patient_ids or []]
    named = f" ({', '.join(ids[:_PATIENTS_NAMED])}{', ...' if count > _PATIENTS_NAMED else ''})" if ids else ""
    leaked = len(integrity.patient_leaked_test_files or [])
    ok = count <= limit
    return _judged(config, name, None, float(count), limit, ok,
                   f"{count} patient{'' if count == 1 else 's'}{named} {'has' if count == 1 else 'have'} images in "
                   f"more than one split ({leaked} test images of training "
                   f"patients, left out of the leakage-free figures); {'within' if ok else 'above'} the allowed "
                   f"{limit}")


@register_gate("min_pointing_game")
def _pointing_game_gate(inp: GateInput, config: GatesConfig) -> GateResult | None:
    """min_pointing_game: the strict pointing-game rate of the primary (first) explanation method."""
    if config.min_pointing_game is None:
        return None
    target = inp.target
    name, limit, who = "min_pointing_game", config.min_pointing_game, target.who
    blocks = [b for b in target.explanations or [] if isinstance(b, Explanation)]
    if target.why or not blocks:
        why = target.why or "no explanation checks in results: [gradcam] enabled with check_images > 0"
        return _judged(config, name, target.backbone, None, limit, False,
                       f"{who} pointing game is missing ({why}); minimum {limit:.3f}")
    primary = blocks[0]
    if primary.error:
        return _judged(config, name, target.backbone, None, limit, False,
                       f"{who} {primary.method} checks failed ({primary.error}); minimum {limit:.3f}")
    # the model's one pointing game of this method: its localisation block (the checks' own, in
    # runs before issue 30)
    entry = target.entry.localisation if target.entry is not None else None
    located = [b for b in entry or [] if isinstance(b, Localisation) and b.method == primary.method]
    game = located[0] if located else \
        primary.pointing_game if isinstance(primary.pointing_game, Localisation) else Localisation()
    if game.error:
        return _judged(config, name, target.backbone, None, limit, False,
                       f"{who} {primary.method} localisation failed ({game.error}); minimum {limit:.3f}")
    rate = _num(game.rate)
    if rate is None:
        return GateResult(name, target.backbone, "WARN", None, float(limit),
                          f"{who}: not evaluated (no test image has a tumour outline); minimum {limit:.3f}")
    chance = _num(game.chance_rate)
    detail = (f"{who} {primary.method} pointing game {rate:.3f} ({game.hits} of {game.total} "
              f"peaks in the tumour outline" + (f"; chance {chance:.3f}" if chance is not None else "") + ")")
    ok = rate + _EPS >= limit
    return _judged(config, name, target.backbone, rate, limit, ok,
                   f"{detail} {'meets' if ok else 'is below'} the minimum {limit:.3f}")


@register_gate("explanation_sanity")
def _explanation_sanity_gate(inp: GateInput, config: GatesConfig) -> GateResult | None:
    """explanation_sanity: every method's maps change when the learned weights are randomised.

    ``value`` is the share of methods whose maps passed (1.0: all); threshold 1.0."""
    if not config.explanation_sanity:
        return None
    target = inp.target
    name, who = "explanation_sanity", target.who
    blocks = [b for b in target.explanations or [] if isinstance(b, Explanation)]
    if target.why or not blocks:
        why = target.why or "no explanation checks in results: [gradcam] enabled with check_images > 0"
        return _judged(config, name, target.backbone, None, 1.0, False, f"{who} explanation checks are missing ({why})")

    def randomisation(b: Explanation) -> Randomisation:
        return b.randomisation if isinstance(b.randomisation, Randomisation) else Randomisation()

    verdicts = {str(b.method): randomisation(b).passed for b in blocks}
    unmeasured = [m for m, v in verdicts.items() if not isinstance(v, bool)]
    if unmeasured:
        return _judged(config, name, target.backbone, None, 1.0, False,
                       f"{who}: the randomisation test did not run for {', '.join(unmeasured)}")

    def median(m: str) -> str:
        block = next(b for b in blocks if str(b.method) == m)
        rho = _num(randomisation(block).spearman_median)
        return f"{m} (Spearman {rho:.2f})" if rho is not None else m

    failed = [m for m, v in verdicts.items() if not v]
    value = 1.0 - len(failed) / len(verdicts)
    if failed:
        message = (f"{who}: the maps of {', '.join(map(median, failed))} barely change when the learned weights are "
                   "randomised, so they do not explain the model")
    else:
        message = f"{who}: the maps of {', '.join(map(median, verdicts))} change when the learned weights are randomised"
    return _judged(config, name, target.backbone, value, 1.0, not failed, message)



# ------------------------------------------------------------------------------------------------
# Serialisers


def overall_status(gates: Sequence[GateResult]) -> str:
    """"FAIL" if any gate failed, else "WARN" if any warned, else "PASS"; "NONE" with no gates."""
    if not gates:
        return "NONE"
    statuses = {g.status for g in gates}
    return "FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS"


def gates_to_dict(gates: Sequence[GateResult]) -> dict:
    """The ``gates`` block for results.json: ``{"summary": {PASS, WARN, FAIL, status}, "gates": [...]}``."""
    summary = {s: sum(g.status == s for g in gates) for s in STATUSES}
    summary["status"] = overall_status(gates)
    return {"summary": summary, "gates": [dataclasses.asdict(g) for g in gates]}


def gates_to_junit(gates: Sequence[GateResult], suite_name: str) -> str:
    """JUnit XML with one ``<testcase>`` per gate, for CI test-result views.

    FAIL -> ``<failure>``. WARN -> ``<skipped message="WARN: ...">``: JUnit has no warning state, and
    of the states it has, "skipped" is the one that never fails a build yet is counted and shown
    apart from passes by Jenkins, GitLab, Azure DevOps and the GitHub JUnit report actions (a pass
    with only ``<system-out>`` hides the warning behind a click). Every testcase carries its message
    in ``<system-out>`` too, so value and threshold are readable for passes as well.
    """
    n_fail = sum(g.status == "FAIL" for g in gates)
    n_warn = sum(g.status == "WARN" for g in gates)
    counts = {"tests": str(len(gates)), "failures": str(n_fail), "errors": "0", "skipped": str(n_warn)}
    root = ET.Element("testsuites", {"name": "auditrun gates", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": suite_name, **counts, "time": "0"})
    for g in gates:
        case = ET.SubElement(suite, "testcase", {"classname": f"auditrun.gates.{suite_name}",
                                                 "name": g.label, "time": "0"})
        if g.status == "FAIL":
            failure = ET.SubElement(case, "failure", {"message": g.message, "type": "GateFailed"})
            failure.text = _detail(g)
        elif g.status == "WARN":
            ET.SubElement(case, "skipped", {"message": f"WARN: {g.message}"})
        out = ET.SubElement(case, "system-out")
        out.text = _detail(g)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _detail(g: GateResult) -> str:
    value = "n/a" if g.value is None else f"{g.value:.6g}"
    return f"{g.status} {g.label}: {g.message}\nvalue={value} threshold={g.threshold:.6g}"


def gates_summary_lines(gates: Sequence[GateResult], include_pass: bool = True) -> list[str]:
    """Lines for stderr: a count line, then FAIL, WARN (and PASS) gates, worst first."""
    if not gates:
        return ["gates: none configured"]
    summary = gates_to_dict(gates)["summary"]
    lines = [f"gates: {summary['status']} ({summary['FAIL']} failed, {summary['WARN']} warned, "
             f"{summary['PASS']} passed)"]
    for status in ("FAIL", "WARN", "PASS"):
        if status == "PASS" and not include_pass:
            break
        lines += [f"  {status} {g.label}: {g.message}" for g in gates if g.status == status]
    return lines


__all__ = [
    "GATES", "GATE_FAMILIES", "Gate", "GateInput", "GateResult", "GateTarget", "GatesConfig", "evaluate_gates",
    "gates_summary_lines", "gates_to_dict", "gates_to_junit", "overall_status", "register_gate",
]
