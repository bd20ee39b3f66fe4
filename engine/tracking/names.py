"""What an audit's results.json becomes in an experiment tracker: metric names and values, the
training curves, params and tags. Pure functions of results.json (and the manifest); nothing here
imports MLflow, so the naming is tested without it and the report's numbers and the tracker's are
one set.

Every metric comes with the JSON pointer of its value in results.json (``/backbones/0/test/macro_f1``):
the tracker logs that index as ``auditrun/metric_sources.json``, so any number in MLflow can be
traced back to the document it came from. Names follow ``<split>_<metric>[_leakage_free][_ci_low|_ci_high]``
(docs/tracking.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

#: A metric: name -> (value, JSON pointer into results.json).
Metrics = dict[str, tuple[float, str]]

#: results.json's localisation scores -> the tracker's names for them.
LOCALISATION_NAMES = {"rate": "pointing_game", "tolerant_rate": "pointing_game_tolerant", "energy": "energy",
                      "coverage": "coverage", "iou": "iou"}
#: The headline scores of a metrics block (``test``, ``leakage_free``, an external folder's block).
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "n_images")
#: Per-epoch columns of ``history``: Keras' own names, as MLflow's Keras autologging writes them, so a
#: team's training runs and its audits chart alike.
CURVES = ("loss", "accuracy", "val_loss", "val_accuracy")
#: Integrity counts of the whole audit (the parent run).
INTEGRITY = ("n_files", "n_readable", "n_test", "cross_split_pairs", "cross_split_exact", "cross_split_near",
             "cross_split_near_fraction", "cross_split_patients", "label_conflicts")

# MLflow allows letters, digits, "_", "-", ".", " ", ":" and "/" in metric, param and tag keys.
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-.:/ ]")
#: MLflow's limits on a param value (2.x and later) and a tag value.
PARAM_VALUE_LIMIT = 6000
TAG_VALUE_LIMIT = 5000


def key(text: object) -> str:
    """``text`` as a metric-name part: ``gradcam++`` -> ``gradcam_pp``, a space or ``+`` never breaks a name."""
    return _UNSAFE.sub("_", str(text).replace("++", "_pp").replace("+", "_plus"))


def pointer(*parts: object) -> str:
    """RFC 6901 JSON pointer."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(document: Any, ptr: str) -> Any:
    """The value ``ptr`` points at in ``document`` (KeyError/IndexError where it points nowhere)."""
    node = document
    for raw in ptr.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class _Collector:
    def __init__(self, base: tuple):
        self.base, self.out = base, {}

    def add(self, name: str, value: Any, *path: object) -> None:
        v = _number(value)
        if v is not None:
            self.out[name] = (v, pointer(*self.base, *path))

    def block(self, prefix: str, block: Any, suffix: str, *path: object) -> None:
        """A metrics block (results.json's ``test``, ``leakage_free``): headline scores, per-class
        precision/recall/F1 and ROC AUC."""
        if not isinstance(block, Mapping):
            return
        for m in HEADLINE:
            self.add(f"{prefix}_{m}{suffix}", block.get(m), *path, m)
        for cls, row in (block.get("per_class") or {}).items():
            for m in ("precision", "recall", "f1"):
                if isinstance(row, Mapping):
                    self.add(f"{prefix}_{m}_{key(cls)}{suffix}", row.get(m), *path, "per_class", cls, m)
        auc = block.get("roc_auc")
        if isinstance(auc, Mapping):
            self.add(f"{prefix}_roc_auc{suffix}", auc.get("macro"), *path, "roc_auc", "macro")
            for cls, v in (auc.get("per_class") or {}).items():
                self.add(f"{prefix}_roc_auc_{key(cls)}{suffix}", v, *path, "roc_auc", "per_class", cls)

    def intervals(self, prefix: str, block: Any, suffix: str, *path: object) -> None:
        """Bootstrap CIs (results.json's ``uncertainty.test`` / ``uncertainty.leakage_free``)."""
        if not isinstance(block, Mapping):
            return
        for m in ("accuracy", "macro_f1"):
            iv = block.get(m)
            if isinstance(iv, Mapping):
                for bound in ("ci_low", "ci_high"):
                    self.add(f"{prefix}_{m}{suffix}_{bound}", iv.get(bound), *path, m, bound)
        for cls, iv in (block.get("per_class_recall") or {}).items():
            if isinstance(iv, Mapping):
                for bound in ("ci_low", "ci_high"):
                    self.add(f"{prefix}_recall_{key(cls)}{suffix}_{bound}", iv.get(bound), *path, "per_class_recall",
                             cls, bound)


def backbone_metrics(entry: Mapping, index: int) -> Metrics:
    """One backbone's metrics (results.json ``backbones[index]``): test and its leakage-free twin with
    CIs, per-class scores, validation, calibration, localisation, subgroup gaps, training stages."""
    c = _Collector(("backbones", index))
    c.block("test", entry.get("test"), "", "test")
    c.block("test", entry.get("leakage_free"), "_leakage_free", "leakage_free")
    unc = entry.get("uncertainty") or {}
    c.intervals("test", unc.get("test"), "", "uncertainty", "test")
    c.intervals("test", unc.get("leakage_free"), "_leakage_free", "uncertainty", "leakage_free")
    for m in ("accuracy", "macro_f1", "log_loss"):
        c.add(f"validation_{m}", (entry.get("validation") or {}).get(m), "validation", m)
    cal = entry.get("calibration") or {}
    for name, field in (("test_ece", "ece_before"), ("test_ece_calibrated", "ece_after"), ("test_nll", "nll_before"),
                        ("test_nll_calibrated", "nll_after"), ("calibration_temperature", "temperature")):
        c.add(name, cal.get(field), "calibration", field)
    _localisation(c, "test", entry.get("localisation"), ("localisation",))
    game = (entry.get("gradcam") or {}).get("pointing_game_validation") or {}
    c.add("validation_pointing_game", game.get("rate"), "gradcam", "pointing_game_validation", "rate")
    gap = entry.get("subgroup_gap") or {}
    for attr, e in (gap.get("attributes") or {}).items():
        if isinstance(e, Mapping):
            c.add(f"test_subgroup_gap_{key(attr)}", e.get("gap"), "subgroup_gap", "attributes", attr, "gap")
            for bound in ("ci_low", "ci_high"):
                c.add(f"test_subgroup_gap_{key(attr)}_{bound}", e.get(bound), "subgroup_gap", "attributes", attr, bound)
    c.add("test_subgroup_gap_largest", (gap.get("largest") or {}).get("gap"), "subgroup_gap", "largest", "gap")
    for i, st in enumerate(entry.get("stages") or []):
        if isinstance(st, Mapping) and st.get("name"):
            for m in ("epochs_run", "best_epoch", "time_s"):
                c.add(f"train_{key(st['name'])}_{m}", st.get(m), "stages", i, m)
    params = entry.get("parameters") or {}
    for m in ("total", "trainable"):
        c.add(f"parameters_{m}", params.get(m), "parameters", m)
    return c.out


def _localisation(c: _Collector, prefix: str, blocks: Any, path: tuple) -> None:
    """One set of names per explanation method: ``test_gradcam_pointing_game`` with its CI and the
    random and centre-map values it is judged against."""
    for i, loc in enumerate(blocks or []):
        if not isinstance(loc, Mapping) or "error" in loc or not loc.get("method"):
            continue
        method = key(loc["method"])
        for field, name in LOCALISATION_NAMES.items():
            base = f"{prefix}_{method}_{name}"
            c.add(base, loc.get(field), *path, i, field)
            ci = loc.get(f"{field}_ci")
            if isinstance(ci, list) and len(ci) == 2:
                c.add(f"{base}_ci_low", ci[0], *path, i, f"{field}_ci", 0)
                c.add(f"{base}_ci_high", ci[1], *path, i, f"{field}_ci", 1)
            for chance in ("random", "centre"):
                c.add(f"{base}_{chance}", ((loc.get("chance") or {}).get(chance) or {}).get(field),
                      *path, i, "chance", chance, field)
        c.add(f"{prefix}_{method}_n_images", loc.get("n_images"), *path, i, "n_images")


def audit_metrics(results: Mapping) -> Metrics:
    """The audit's own run: the best backbone's metrics under the same names (so the experiment's
    table compares audits by the model each one selected), the integrity counts and the gates."""
    out: Metrics = {}
    best = (results.get("best_backbone") or {}).get("name")
    for i, entry in enumerate(results.get("backbones") or []):
        if entry.get("name") == best:
            out.update(backbone_metrics(entry, i))
    c = _Collector(())
    integ = results.get("integrity") or {}
    for m in INTEGRITY:
        c.add(f"integrity_{m}", integ.get(m), "integrity", m)
    summary = (results.get("gates") or {}).get("summary") or {}
    for status in ("PASS", "WARN", "FAIL"):
        c.add(f"gates_{status.lower()}", summary.get(status), "gates", "summary", status)
    c.add("run_wall_time_s", (results.get("run") or {}).get("wall_time_s"), "run", "wall_time_s")
    out.update(c.out)
    return out


def curves(entry: Mapping, index: int) -> dict[str, list[tuple[int, float, str]]]:
    """The training curves: per Keras name, (step, value, pointer), one step per epoch in the order
    ``history`` lists them (a fine-tuned model's stages follow on)."""
    out: dict[str, list] = {}
    for step, row in enumerate(entry.get("history") or [], start=1):
        for name in CURVES:
            v = _number((row or {}).get(name))
            if v is not None:
                out.setdefault(name, []).append((step, v, pointer("backbones", index, "history", step - 1, name)))
    return out


def external_metrics(report: Mapping, name: str) -> dict[str, Metrics]:
    """``auditrun evaluate``'s report (RUN_DIR/external/...json) -> per backbone,
    ``external_<name>_<metric>`` with pointers into that report."""
    out: dict[str, Metrics] = {}
    prefix = f"external_{key(name)}"
    for i, entry in enumerate(report.get("backbones") or []):
        c = _Collector(("backbones", i))
        c.block(prefix, entry, "")
        _localisation(c, prefix, entry.get("localisation"), ("localisation",))
        out[entry.get("name")] = c.out
    return out


# ------------------------------------------------------------------------------------ params and tags


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value, default=str, sort_keys=True)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{key(k)}" if prefix else key(k), v, out)
        return
    out[prefix] = _text({} if isinstance(value, Mapping) else value)[:PARAM_VALUE_LIMIT]


def manifest_params(manifest: Any) -> dict[str, str]:
    """The audit's settings, every key with its value in force (defaults included), as
    ``section.key`` params (``tracking.mlflow`` left out). ``[[backbones]]`` and ``[[models]]`` are listed by name here; each
    model's run carries its own entry's settings (``model_params``)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(manifest):
        if f.name in ("path", "text", "backbones", "models"):
            continue
        _flatten(f.name, getattr(manifest, f.name), out)
    # where the audit is logged is the run's place, not a setting; a URI may carry a password
    out.pop("tracking.mlflow", None)
    out["backbones"] = ", ".join(b.name for b in manifest.backbones)[:PARAM_VALUE_LIMIT]
    out["models"] = ", ".join(mo.name for mo in manifest.models)[:PARAM_VALUE_LIMIT]
    return out


def model_params(manifest: Any, name: str, fine_tuned_from: str | None = None) -> dict[str, str]:
    """One ``[[backbones]]`` or ``[[models]]`` entry's settings (a fine-tuned model: its frozen backbone's)."""
    out: dict[str, str] = {}
    for kind, entries in (("backbone", manifest.backbones), ("model", manifest.models)):
        for cfg in entries:
            if cfg.name in (name, fine_tuned_from):
                _flatten(kind, cfg, out)
                return out
    return out


def _device(results: Mapping) -> str | None:
    training = (results.get("environment") or {}).get("training") or {}
    devices = training.get("devices") or []
    parts = [f"{d.get('count') or 1} x {d.get('type')} {d.get('name') or ''}".strip() for d in devices
             if isinstance(d, Mapping)]
    return "; ".join(parts) or None


def gate_tags(results: Mapping, backbone: str | None) -> dict[str, str]:
    """``auditrun.gate.<gate>[.<backbone>]`` -> PASS/WARN/FAIL: on the audit's run every gate, on a
    model's run that model's gates (and the run-wide ones)."""
    out = {}
    for g in (results.get("gates") or {}).get("gates") or []:
        if backbone is not None and g.get("backbone") not in (None, backbone):
            continue
        name = f"auditrun.gate.{key(g.get('name'))}" + (f".{key(g['backbone'])}" if g.get("backbone") and backbone is None
                                                           else "")
        out[name] = str(g.get("status"))
    return out


def audit_tags(results: Mapping) -> dict[str, str]:
    """The audit's run: what finds it (run id, experiment) and what filters it (status, gates,
    commit, data fingerprint, device)."""
    env, run = results.get("environment") or {}, results.get("run") or {}
    training = env.get("training") or {}
    gates = ((results.get("gates") or {}).get("summary") or {}).get("status")
    commit = env.get("git_commit")
    tags = {
        "auditrun.run_id": run.get("id"),
        "auditrun.experiment": (results.get("experiment") or {}).get("name"),
        "auditrun.status": run.get("status"),
        "auditrun.gates": gates,
        "auditrun.git_commit": commit,
        "auditrun.data_fingerprint": (results.get("data") or {}).get("fingerprint"),
        "auditrun.device": _device(results),
        "auditrun.distribute": training.get("distribute"),
        "auditrun.precision": training.get("precision"),
        "auditrun.version": env.get("auditrun"),
        "auditrun.best_backbone": (results.get("best_backbone") or {}).get("name"),
        "auditrun.resumed": run.get("resumed"),
        "auditrun.reused_from": run.get("reused_from"),
        # MLflow's own: the UI shows the commit and the description on the run's page
        "mlflow.source.git.commit": commit.removesuffix("-dirty") if isinstance(commit, str) else None,
        "mlflow.note.content": _note(results),
        **gate_tags(results, None),
    }
    return {k: _text(v)[:TAG_VALUE_LIMIT] for k, v in tags.items() if v is not None}


def backbone_tags(results: Mapping, entry: Mapping) -> dict[str, str]:
    tags = {
        "auditrun.run_id": (results.get("run") or {}).get("id"),
        "auditrun.backbone": entry.get("name"),
        "auditrun.display_name": entry.get("display_name"),
        "auditrun.architecture": entry.get("architecture"),
        "auditrun.source": entry.get("source"),
        "auditrun.status": entry.get("status"),
        "auditrun.fine_tuned_from": entry.get("fine_tuned_from"),
        "auditrun.error": entry.get("error"),
        "auditrun.best": (results.get("best_backbone") or {}).get("name") == entry.get("name"),
        **gate_tags(results, entry.get("name")),
    }
    return {k: _text(v)[:TAG_VALUE_LIMIT] for k, v in tags.items() if v is not None}


def _note(results: Mapping) -> str:
    exp, run = results.get("experiment") or {}, results.get("run") or {}
    gates = (results.get("gates") or {}).get("summary") or {}
    lines = [f"auditrun audit {run.get('id')} of experiment {exp.get('name')!r}: status {run.get('status')}"
             + (f", gates {gates.get('status')}" if gates.get("status") else "")]
    if exp.get("description"):
        lines.append(str(exp["description"]))
    return "\n\n".join(lines)

