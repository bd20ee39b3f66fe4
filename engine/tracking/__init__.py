"""Tracking: every audit as runs in the experiment tracker a team already uses (MLflow,
``auditrun[mlflow]``): one run per audit, one nested run per model, metrics named after results.json
(``engine.tracking.names``), artefacts and the trained models. docs/tracking.md."""

from engine.tracking.client import INSTALL_HINT, Target, Tracker, embedded_uri, shown_uri, target
from engine.tracking.names import audit_metrics, backbone_metrics, curves, external_metrics, resolve
from engine.tracking.stage import (close_audit, end_audit, load_model, log_audit, log_external, logged,
                                   open_model_runs, open_tracker, signature, start_audit)

__all__ = ["INSTALL_HINT", "Target", "Tracker", "audit_metrics", "backbone_metrics", "close_audit", "curves",
           "embedded_uri", "end_audit", "external_metrics", "load_model", "log_audit", "log_external", "logged",
           "open_model_runs", "open_tracker", "resolve", "shown_uri", "signature", "start_audit", "target"]
