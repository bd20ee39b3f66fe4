"""Evaluation stage: every number the report shows about a model's predictions.

Takes true labels and predicted probabilities (validation and test). Gives the metrics, each with
one definition (``metrics``), calibration and temperature scaling, bootstrap confidence intervals,
McNemar comparisons between backbones, performance by subgroup (site, scanner, sex, age band) with
the largest gap between subgroups (``subgroups``), and external validation of a finished run's saved
models.
"""

from engine import lazy_exports

#: Public name -> the module of this stage that defines it (imported on first use).
_EXPORTS = {
    "ExternalImages": "external",
    "ModelRef": "distributed",
    "model_ref": "distributed",
    "predict_on": "distributed",
    "read_run_results": "external",
    "finished_backbones": "external",
    "with_references": "external",
    "external_annotations": "external",
    "folder_key": "external",
    "metrics_block": "external",
    "store_report": "external",
    "Evaluation": "scores",
    "evaluate": "scores",
    "predict_probs": "scores",
    "split_metrics": "scores",
    "save_predictions": "scores",
    "validation_file": "predictions",
    "outputs_of": "scores",
    "read_outputs": "scores",
    "Statistics": "run_statistics",
    "ModelStatistics": "run_statistics",
    "statistics": "run_statistics",
    "check_subgroup_values": "run_statistics",
    "select_best": "selection",
    "CalibrationResult": "calibration",
    "ClassificationMetrics": "metrics",
    "McNemarResult": "compare",
    "ReliabilityCurve": "calibration",
    "accuracy_from_confusion": "metrics",
    "age_band": "subgroups",
    "apply_temperature": "calibration",
    "audit_subgroups": "subgroups",
    "bootstrap_ci": "uncertainty",
    "bootstrap_summary": "uncertainty",
    "calibrate": "calibration",
    "classification_metrics": "metrics",
    "discover_folder": "external",
    "expected_calibration_error": "calibration",
    "fit_temperature": "calibration",
    "format_p": "compare",
    "macro_f1_from_confusion": "metrics",
    "macro_f1_score": "metrics",
    "mcnemar_pair": "compare",
    "metrics_from_confusion": "uncertainty",
    "negative_log_likelihood": "calibration",
    "pairwise_mcnemar": "compare",
    "per_class_scores": "metrics",
    "present_labels": "metrics",
    "record_values": "subgroups",
    "reliability_curve": "calibration",
    "resampled_confusion_matrices": "uncertainty",
    "subgroup_gap": "subgroups",
    "subgroup_metrics": "subgroups",
    "subgroup_results": "subgroups",
    "usable_images": "external",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
