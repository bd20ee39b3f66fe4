"""The statistics stage of a run, over every finished model's probabilities: temperature scaling,
bootstrap intervals, performance by subgroup and McNemar comparisons between models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.manifest import Manifest
from engine.progress import Timer


@dataclass
class ModelStatistics:
    """The blocks one model's results.json entry gains (None: not measured)."""

    calibration: dict | None = None
    uncertainty: dict | None = None
    subgroups: dict | None = None
    subgroup_gap: dict | None = None


@dataclass
class Statistics:
    per_model: dict[str, ModelStatistics] = field(default_factory=dict)
    comparisons: list[dict] | None = None
    comparisons_leakage_free: list[dict] | None = None


def check_subgroup_values(m: Manifest, test_records: list, root: Path) -> None:
    """A test image's age that ``[subgroups] by = ["age_band"]`` cannot band stops the run (exit 2)."""
    if "age_band" in m.subgroups.by:
        from engine.evaluation.subgroups import record_values

        record_values(test_records, m.subgroups.age_bands, root=root, strict=True)


def statistics(m: Manifest, data, entries: list, outputs: dict[str, dict], echo: Callable[[str], None],
               timings: dict) -> Statistics:
    """``entries``: the finished models (engine.results.BackboneResult), ``outputs`` their probabilities
    by name (evaluation.outputs_of); ``data``: engine.data.PreparedData."""
    from engine.evaluation.calibration import calibrate
    from engine.evaluation.compare import pairwise_mcnemar
    from engine.evaluation.uncertainty import bootstrap_summary
    from engine.sklearn_warnings import hold_back

    ds, ev = data.dataset, m.evaluation
    y_val, y_te = ds.labels("val"), ds.labels("test")
    keep = data.leakage_free_mask()
    out = Statistics({res.name: ModelStatistics() for res in entries})
    with Timer(echo, "calibration and confidence intervals", timings, "statistics_s"):
        for res in entries:
            probs, stats = outputs[res.name], out.per_model[res.name]
            if ev.temperature_scaling and probs["val_probs"] is not None:
                stats.calibration = calibrate(y_val, probs["val_probs"], y_te, probs["test_probs"],
                                              ev.ece_bins).to_dict()
            if ev.bootstrap_resamples:
                pred = probs["test_probs"].argmax(1)
                # its point values come from sklearn; an interval too small to compute says so itself
                with hold_back():
                    unc = {"test": bootstrap_summary(y_te, pred, ds.class_names, ev.bootstrap_resamples,
                                                     seed=m.experiment.seed, confidence=ev.confidence)}
                    if keep is not None and keep.any():
                        unc["leakage_free"] = bootstrap_summary(y_te[keep], pred[keep], ds.class_names,
                                                                ev.bootstrap_resamples, seed=m.experiment.seed,
                                                                confidence=ev.confidence)
                stats.uncertainty = unc
        if m.subgroups.by:
            _subgroups(m, data, entries, outputs, out, echo)
        if len(entries) >= 2:
            correct = {b.name: outputs[b.name]["test_probs"].argmax(1) == y_te for b in entries}
            out.comparisons = [r.to_dict() for r in pairwise_mcnemar(correct)]
            if keep is not None and keep.sum() > 0:
                out.comparisons_leakage_free = [
                    r.to_dict() for r in pairwise_mcnemar({k: v[keep] for k, v in correct.items()})]
    return out


def _subgroups(m: Manifest, data, entries: list, outputs: dict, out: Statistics, echo) -> None:
    """Performance by subgroup (``[subgroups] by``) on the test split, per model, and the largest
    gap between subgroups (engine.evaluation.subgroups)."""
    from engine.evaluation.subgroups import audit_subgroups, record_values
    from engine.sklearn_warnings import hold_back

    ds, sub, ev = data.dataset, m.subgroups, m.evaluation
    values = record_values(ds.test, sub.age_bands)
    y_te = ds.labels("test")
    for res in entries:
        with hold_back():
            block = audit_subgroups(y_te, outputs[res.name]["test_probs"].argmax(1), values, ds.class_names,
                                    sub.by, min_n=sub.min_n, n_resamples=ev.bootstrap_resamples,
                                    seed=m.experiment.seed, confidence=ev.confidence, age_bands=sub.age_bands)
        stats = out.per_model[res.name]
        stats.subgroups, stats.subgroup_gap = block["subgroups"], block["subgroup_gap"]
        largest = stats.subgroup_gap["largest"]
        if largest is not None:
            ci = (f" [{largest['ci_low']:.3f}, {largest['ci_high']:.3f}]"
                  if largest["ci_low"] is not None and largest["ci_high"] is not None else "")
            echo(f"  {res.display_name}: largest subgroup gap in macro-F1 {largest['gap']:.3f}{ci}, "
                 f"{largest['attribute']} {largest['higher']['group']} vs {largest['lower']['group']}")
    unavailable = out.per_model[entries[0].name].subgroup_gap["unavailable"] if entries else []
    if unavailable:
        echo(f"warning: subgroups: no test image records {', '.join(unavailable)}; "
             "those attributes are listed as unavailable")
