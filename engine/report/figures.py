"""Report figures: matplotlib (Agg, object API) + seaborn PNGs under ``run_dir/figures/``.

Every function reads plain ``results.json`` dicts and returns a :class:`FigureRecord` whose alt
text and caption are written from the same numbers the figure draws, so a screen-reader user and a
reader of the printed caption get the facts without the picture.

Accessibility choices (DEVELOPERS.md): Okabe-Ito colours, and every line also differs by dash and
marker so the plots survive grey-scale printing and colour-vision deficiency; viridis for matrices.

Determinism: the object API (``matplotlib.figure.Figure`` printed on its own Agg canvas; never
pyplot nor ``matplotlib.use``) keeps no global state, so importing or drawing selects no backend
for the process; a fixed rc context pins fonts and sizes, PNGs are saved at a fixed dpi without
the "Software" metadata chunk, so the same data gives the same bytes on one matplotlib version.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.atomic import write_bytes
from engine.results import (BackboneResult, Calibration, Epoch, Interval, LargestGap, Metrics, ReliabilityBin, Subgroup,
                            SubgroupGap, SubgroupIntervals, as_backbone_result)

FIGURES_DIR = "figures"
DPI = 110

#: Okabe & Ito (2008) colour-blind-safe palette, black omitted (kept for reference lines).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

_RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib, same face as the report text
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": DPI,
    "path.simplify": False,
}


@dataclass(frozen=True)
class FigureRecord:
    """One saved figure: ``path`` relative to the run directory, alt text and a visible caption."""

    path: str
    alt: str
    caption: str
    kind: str


def safe_stem(name: str) -> str:
    """A file-name-safe stem for a backbone label (labels are meant to be stems already)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "backbone"


def _save(fig: Figure, run_dir: Path, filename: str) -> str:
    rel = f"{FIGURES_DIR}/{filename}"
    # The figure's own Agg canvas prints it headless (no display on CI or the nightly host) without
    # matplotlib.use(), which would switch the backend for the whole process. It is attached only
    # now: seaborn draws a figure early when it has a real canvas, which shifts the constrained
    # layout by a few pixels and would change the PNGs.
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # metadata Software=None drops the version-stamped tEXt chunk; fixed dpi and no bbox jitter.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    write_bytes(Path(run_dir) / rel, buffer.getvalue())
    return rel


def _new_figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------------
# Training curves


def _global_epochs(history: Sequence[Epoch]) -> tuple[list[int], int | None]:
    """Running epoch numbers across stages, and the last epoch of the head stage when a
    fine-tuning stage follows it (None when there is no stage change)."""
    epochs, boundary, previous_stage = [], None, None
    for i, row in enumerate(history, start=1):
        stage = row.stage
        if previous_stage is not None and stage != previous_stage and boundary is None:
            boundary = i - 1
        previous_stage = stage
        epochs.append(i)
    return epochs, boundary


def training_curves(backbone: BackboneResult | dict, run_dir: Path) -> FigureRecord | None:
    """Accuracy and loss per epoch, training vs validation, with the head/fine-tune boundary.

    Returns None when the backbone has no recorded history (a failed backbone).
    """
    backbone = as_backbone_result(backbone)
    history = backbone.epochs()
    if not history:
        return None
    name = backbone.label
    epochs, boundary = _global_epochs(history)
    series = {"accuracy": [row.accuracy for row in history], "val_accuracy": [row.val_accuracy for row in history],
              "loss": [row.loss for row in history], "val_loss": [row.val_loss for row in history]}
    with matplotlib.rc_context(_RC):
        fig = _new_figure(7.2, 2.8)
        axes = fig.subplots(1, 2)
        for ax, metric, label in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
            ax.plot(epochs, _nan(series[metric]), color=OKABE_ITO[0], linestyle="-", marker="o",
                    markersize=4, label="training")
            ax.plot(epochs, _nan(series[f"val_{metric}"]), color=OKABE_ITO[1], linestyle="--",
                    marker="s", markersize=4, label="validation")
            if boundary is not None:
                ax.axvline(boundary + 0.5, color="#000000", linestyle=":", linewidth=1)
                ax.annotate("fine-tuning starts", xy=(boundary + 0.5, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -3), textcoords="offset points", ha="left", va="top", fontsize=7)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label.lower())
            ax.set_title(f"{label}: {name}")
            ax.set_xticks(epochs if len(epochs) <= 15 else np.linspace(1, len(epochs), 8).round().astype(int))
            ax.grid(True, color="#dddddd", linewidth=0.5)
        axes[0].legend(loc="lower right")
        rel = _save(fig, run_dir, f"{safe_stem(backbone.name)}_curves.png")

    known = [(v, i) for i, v in enumerate(series["val_accuracy"], start=1) if v is not None]
    n = len(epochs)
    facts = []
    if known:
        best_value, best_epoch = max(known, key=lambda t: (t[0], -t[1]))
        facts.append(f"best validation accuracy {best_value:.2f} at epoch {best_epoch} of {n}")
    last = history[-1]
    facts.append(f"final training accuracy {_f(last.accuracy)}, final validation accuracy "
                 f"{_f(last.val_accuracy)}")
    facts.append(f"final training loss {_f(last.loss, 3)}, final validation loss "
                 f"{_f(last.val_loss, 3)}")
    if boundary is not None:
        facts.append(f"head training for epochs 1 to {boundary}, fine-tuning for epochs {boundary + 1} to {n}")
    alt = f"Training curves for {name}: " + "; ".join(facts) + "."
    caption = (f"Training curves for {name} over {n} epochs. Training: solid line with circles; validation: "
               f"dashed line with squares." + (" The dotted vertical line marks the start of fine-tuning."
                                               if boundary is not None else "")
               + " " + facts[0][0].upper() + facts[0][1:] + ".")
    return FigureRecord(rel, alt, caption, "curves")


def _nan(values: Sequence[float | None]) -> list[float]:
    return [np.nan if v is None else float(v) for v in values]


# ------------------------------------------------------------------------------------------------
# Confusion matrices


def confusion_facts(cm: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """One clause per true class: "87 of 100 glioma images correct; most errors went to meningioma (9)"."""
    clauses = []
    for i, cls in enumerate(class_names):
        row = cm[i]
        total = int(row.sum())
        if total == 0:
            clauses.append(f"no {cls} images")
            continue
        clause = f"{int(row[i])} of {total} {cls} images correct"
        errors = row.copy()
        errors[i] = -1
        j = int(np.argmax(errors))
        if errors[j] > 0:
            clause += f", most errors went to {class_names[j]} ({int(errors[j])})"
        clauses.append(clause)
    return clauses


def _matrix(block: Metrics | None, class_names: Sequence[str]) -> np.ndarray | None:
    cm = block.confusion_matrix if isinstance(block, Metrics) else None
    if not cm:
        return None
    arr = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if arr.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {arr.shape}, expected ({k}, {k}) for classes {list(class_names)}")
    return arr


def _confusion_heatmap(values: np.ndarray, class_names: Sequence[str], run_dir: Path, filename: str, title: str,
                       cbar_label: str, **heatmap_kw) -> str:
    """One annotated viridis heatmap of a confusion matrix (true class by row), saved as a PNG."""
    import seaborn as sns  # imported lazily: seaborn pulls pandas, slow for callers that only build models

    with matplotlib.rc_context(_RC):
        fig = _new_figure(4.6, 3.9)
        ax = fig.subplots()
        sns.heatmap(values, annot=True, cmap="viridis", cbar=True, square=True, ax=ax, xticklabels=class_names,
                    yticklabels=class_names, linewidths=0.5, linecolor="white", cbar_kws={"label": cbar_label},
                    **heatmap_kw)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        ax.tick_params(axis="y", rotation=0)
        return _save(fig, run_dir, filename)


def _split(backbone: BackboneResult, split: str) -> Metrics | None:
    """The metrics of ``split``: "test" or "leakage_free"."""
    if split not in ("test", "leakage_free"):
        raise ValueError(f"no confusion matrix for split {split!r}: expected 'test' or 'leakage_free'")
    return backbone.test if split == "test" else backbone.leakage_free


def confusion_matrix_counts(backbone: BackboneResult | dict, class_names: Sequence[str], run_dir: Path,
                            split: str = "test") -> FigureRecord | None:
    """Counts per (true, predicted) cell, annotated, viridis."""
    backbone = as_backbone_result(backbone)
    cm = _matrix(_split(backbone, split), class_names)
    if cm is None:
        return None
    name = backbone.label
    rel = _confusion_heatmap(cm, class_names, run_dir, f"{safe_stem(backbone.name)}_{split}_confusion.png",
                             "Counts", "images", fmt="d")
    correct, total = int(np.trace(cm)), int(cm.sum())
    clauses = confusion_facts(cm, class_names)
    alt = f"Confusion matrix for {name}: " + "; ".join(clauses) + f". Overall {correct} of {total} correct."
    caption = (f"Confusion matrix for {name} on the {split.replace('_', '-')} split ({total} images), "
               f"rows are the true class and columns the predicted class; {correct} of {total} images "
               f"({correct / total:.1%}) lie on the diagonal." if total else f"Confusion matrix for {name}: no images.")
    return FigureRecord(rel, alt, caption, "confusion")


def confusion_matrix_normalised(backbone: BackboneResult | dict, class_names: Sequence[str], run_dir: Path,
                                split: str = "test") -> FigureRecord | None:
    """Each row divided by its total (per-class recall on the diagonal), viridis 0..1."""
    backbone = as_backbone_result(backbone)
    cm = _matrix(_split(backbone, split), class_names)
    if cm is None:
        return None
    name = backbone.label
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals > 0, cm / np.maximum(totals, 1), np.nan)
    rel = _confusion_heatmap(norm, class_names, run_dir,
                             f"{safe_stem(backbone.name)}_{split}_confusion_normalised.png",
                             "Share of each true class", "share of the true class", fmt=".2f", vmin=0.0, vmax=1.0)
    recalls = [f"{cls} {_f(norm[i, i])}" for i, cls in enumerate(class_names)]
    off = np.where(np.eye(len(class_names), dtype=bool), -1.0, np.nan_to_num(norm, nan=-1.0))
    i, j = np.unravel_index(int(np.argmax(off)), off.shape)
    worst = (f"; largest off-diagonal share: {class_names[i]} called {class_names[j]} ({off[i, j]:.2f})"
             if off[i, j] > 0 else "; no off-diagonal errors")
    alt = f"Row-normalised confusion matrix for {name}: share correct per true class " + ", ".join(recalls) + worst + "."
    caption = (f"Row-normalised confusion matrix for {name}: each row sums to 1, so the diagonal is the "
               f"recall of each class (" + ", ".join(recalls) + ").")
    return FigureRecord(rel, alt, caption, "confusion_normalised")


# ------------------------------------------------------------------------------------------------
# Calibration


def _reliability_points(rows: Sequence[ReliabilityBin]) -> tuple[list[float], list[float], list[int]]:
    conf, acc, count = [], [], []
    for row in rows or []:
        if row.count and row.confidence is not None and row.accuracy is not None:
            conf.append(float(row.confidence))
            acc.append(float(row.accuracy))
            count.append(int(row.count))
    return conf, acc, count


def reliability_diagram(backbone: BackboneResult | dict, run_dir: Path) -> FigureRecord | None:
    """Mean confidence vs accuracy per bin, before and after temperature scaling."""
    backbone = as_backbone_result(backbone)
    cal = backbone.calibration
    if not isinstance(cal, Calibration) or not cal.to_json():
        return None
    name = backbone.label
    before = _reliability_points(cal.reliability_before)
    after = _reliability_points(cal.reliability_after)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(4.2, 3.8)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], color="#000000", linestyle=":", linewidth=1, label="perfect calibration")
        ax.plot(before[0], before[1], color=OKABE_ITO[1], linestyle="--", marker="s", markersize=4,
                label=f"before (ECE {_f(cal.ece_before, 3)})")
        if not cal.not_fitted:
            ax.plot(after[0], after[1], color=OKABE_ITO[0], linestyle="-", marker="o", markersize=4,
                    label=f"after T = {_f(cal.temperature)} (ECE {_f(cal.ece_after, 3)})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("mean confidence in bin")
        ax.set_ylabel("accuracy in bin")
        ax.set_title(f"Reliability: {name}")
        ax.grid(True, color="#dddddd", linewidth=0.5)
        ax.legend(loc="upper left")
        rel = _save(fig, run_dir, f"{safe_stem(backbone.name)}_reliability.png")
    gap = ""
    if before[0]:
        gaps = [abs(c - a) for c, a in zip(before[0], before[1])]
        k = int(np.argmax(gaps))
        gap = (f"; before scaling the largest gap is at mean confidence {before[0][k]:.2f}, where accuracy is "
               f"{before[1][k]:.2f} ({before[2][k]} images)")
    bins = cal.bins
    if cal.not_fitted:
        alt = (f"Reliability diagram for {name}: expected calibration error {_f(cal.ece_before, 3)}, "
               f"{bins} bins{gap}; no temperature scaling ({cal.not_fitted}).")
        caption = (f"Reliability diagram for {name} on the test split. Points on the dotted diagonal are perfectly "
                   f"calibrated; dashed line with squares: model output (ECE {_f(cal.ece_before, 3)}). "
                   f"Temperature scaling was not fitted: {cal.not_fitted}.")
        return FigureRecord(rel, alt, caption, "reliability")
    alt = (f"Reliability diagram for {name}: expected calibration error {_f(cal.ece_before, 3)} before "
           f"and {_f(cal.ece_after, 3)} after temperature scaling with T = {_f(cal.temperature)}, "
           f"{bins} bins{gap}.")
    caption = (f"Reliability diagram for {name} on the test split. Points on the dotted diagonal are perfectly "
               f"calibrated; dashed line with squares: model output (ECE {_f(cal.ece_before, 3)}); solid "
               f"line with circles: after temperature scaling fitted on validation (ECE {_f(cal.ece_after, 3)}).")
    return FigureRecord(rel, alt, caption, "reliability")


# ------------------------------------------------------------------------------------------------
# Trend across runs


def trend_plot(series: dict[str, list[tuple[str, float | None]]], display: dict[str, str],
               run_dir: Path) -> FigureRecord | None:
    """Test macro-F1 per run for every backbone (``series``: name -> [(run_id, value)])."""
    usable = {k: v for k, v in series.items() if any(val is not None for _, val in v)}
    if not usable:
        return None
    run_ids: list[str] = []
    for points in usable.values():
        for run_id, _ in points:
            if run_id not in run_ids:
                run_ids.append(run_id)
    labels = {name: display.get(name, name) for name in usable}
    with matplotlib.rc_context(_RC):
        fig = _new_figure(7.2, 3.0)
        ax = fig.subplots()
        for k, (name, points) in enumerate(usable.items()):
            xs = [run_ids.index(r) for r, _ in points]
            ys = _nan([v for _, v in points])
            ax.plot(xs, ys, color=OKABE_ITO[k % len(OKABE_ITO)], linestyle=LINESTYLES[k % len(LINESTYLES)],
                    marker=MARKERS[k % len(MARKERS)], markersize=5, label=labels[name])
        ax.set_xticks(range(len(run_ids)))
        ax.set_xticklabels(run_ids, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("test macro-F1")
        ax.set_xlabel("run")
        ax.set_title("Test macro-F1 across runs")
        ax.grid(True, color="#dddddd", linewidth=0.5)
        ax.legend(loc="best")
        rel = _save(fig, run_dir, "trend_macro_f1.png")
    parts = []
    for name, points in usable.items():
        known = [(r, v) for r, v in points if v is not None]
        first, last = known[0], known[-1]
        parts.append(f"{labels[name]} from {first[1]:.2f} (run {first[0]}) to {last[1]:.2f} "
                     f"(run {last[0]})" if len(known) > 1 else f"{labels[name]} {last[1]:.2f} (run {last[0]})")
    alt = f"Line chart of test macro-F1 over the last {len(run_ids)} runs: " + "; ".join(parts) + "."
    caption = (f"Test macro-F1 of each backbone over the last {len(run_ids)} runs, oldest on the left; each "
               f"backbone has its own colour, line style and marker. " + "; ".join(parts) + ".")
    return FigureRecord(rel, alt, caption, "trend")


# ------------------------------------------------------------------------------------------------
# Performance by subgroup


_ATTRIBUTE_NAMES = {"site": "site", "scanner": "scanner", "sex": "sex", "age_band": "age band"}


def _forest_rows(groups: dict[str, list[Subgroup]]) -> list[tuple[str, Subgroup]]:
    """(attribute, entry) of every group with a macro-F1, attributes in order, groups in order."""
    return [(attribute, e) for attribute, entries in groups.items() for e in entries or []
            if isinstance(e, Subgroup) and e.macro_f1 is not None]


def _macro_f1_interval(e: Subgroup) -> Interval:
    return e.ci.macro_f1 if isinstance(e.ci, SubgroupIntervals) and isinstance(e.ci.macro_f1, Interval) else Interval()


def _forest_text(attribute: str, e: Subgroup, confidence: float) -> str:
    ci = _macro_f1_interval(e)
    lo, hi = ci.low, ci.high
    interval = f", {confidence * 100:.0f} % CI {lo:.2f}–{hi:.2f}" if lo is not None and hi is not None else ""
    pooled = f", pooled from {', '.join(map(str, e.pooled))}" if e.pooled else ""
    return f"{_attribute_name(attribute)} {e.group} {e.macro_f1:.2f}{interval} (n={e.n}{pooled})"


def _attribute_name(attribute: object) -> object:
    return _ATTRIBUTE_NAMES.get(attribute, attribute)


def subgroup_forest(backbone: BackboneResult | dict, run_dir: Path) -> FigureRecord | None:
    """Forest plot: test macro-F1 of every subgroup with its bootstrap interval, one row per group,
    grouped by attribute, and the backbone's macro-F1 on the whole test split as a dotted line.

    Groups are blue circles; the pooled group "other" is a vermilion square, so the two differ by
    shape as well as colour. None when the backbone has no subgroup with a macro-F1.
    """
    backbone = as_backbone_result(backbone)
    groups = backbone.subgroups
    rows = _forest_rows(groups) if isinstance(groups, dict) else []
    if not rows:
        return None
    gap = backbone.subgroup_gap if isinstance(backbone.subgroup_gap, SubgroupGap) else SubgroupGap()
    confidence = float(gap.confidence or 0.95)
    overall = backbone.test.macro_f1 if isinstance(backbone.test, Metrics) else None
    name = backbone.label
    with matplotlib.rc_context(_RC):
        fig = _new_figure(6.4, 1.0 + 0.32 * len(rows))
        ax = fig.subplots()
        for y, (attribute, e) in enumerate(rows):
            ci = _macro_f1_interval(e)
            other = e.group == "other"
            style = dict(color=OKABE_ITO[1] if other else OKABE_ITO[0], marker="s" if other else "o", markersize=5)
            if ci.low is not None and ci.high is not None:
                ax.errorbar([e.macro_f1], [y], xerr=[[e.macro_f1 - ci.low], [ci.high - e.macro_f1]],
                            capsize=3, linewidth=1.2, **style)
            else:
                ax.plot([e.macro_f1], [y], linestyle="none", **style)
        if overall is not None:
            ax.axvline(overall, color="#000000", linestyle=":", linewidth=1)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{_attribute_name(a)}: {e.group} (n={e.n})" for a, e in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"test macro-F1 with {confidence * 100:.0f} % bootstrap interval")
        ax.set_title(f"Macro-F1 by subgroup: {name}")
        ax.grid(True, axis="x", color="#dddddd", linewidth=0.5)
        rel = _save(fig, run_dir, f"{safe_stem(backbone.name)}_subgroups.png")
    parts = "; ".join(_forest_text(a, e, confidence) for a, e in rows)
    largest = gap.largest if isinstance(gap.largest, LargestGap) else None
    gap_text = ""
    if largest and largest.gap is not None:
        interval = (f" ({confidence * 100:.0f} % CI {largest.ci_low:.2f} to {largest.ci_high:.2f})"
                    if largest.ci_low is not None and largest.ci_high is not None else "")
        gap_text = (f" Largest gap: {largest.gap:.2f}{interval} between "
                    f"{_attribute_name(largest.attribute)} {largest.higher.group} and {largest.lower.group}.")
    line = f" Dotted line: macro-F1 on the whole test split, {overall:.2f}." if overall is not None else ""
    alt = f"Forest plot of test macro-F1 by subgroup for {name}: {parts}.{gap_text}{line}"
    caption = (f"Test macro-F1 of {name} per subgroup, each point with its {confidence * 100:.0f} % bootstrap "
               f"interval (resampled within the group); blue circles are groups, a vermilion square the pooled "
               f"group “other”.{gap_text}{line}")
    return FigureRecord(rel, alt, caption, "subgroups")
