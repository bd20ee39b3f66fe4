"""Nightly stage: one run among many.

Takes a finished run's ``results.json``. Gives its history record and the trend against earlier
runs, PASS / WARN / FAIL gates (JSON and JUnit), the per-experiment lock, and retention of old
runs and cached arrays.
"""

from engine import lazy_exports

#: Public name -> the module of this stage that defines it (imported on first use).
_EXPORTS = {
    "ExperimentLock": "lock",
    "GATES": "gates",
    "GATE_FAMILIES": "gates",
    "Gate": "gates",
    "GateInput": "gates",
    "GateResult": "gates",
    "GateTarget": "gates",
    "GatesConfig": "gates",
    "HISTORY_FILE": "history",
    "LATEST_FILE": "history",
    "LOCK_FILE": "lock",
    "LockHolder": "lock",
    "adopt_entry": "reuse",
    "append_record": "history",
    "dataset_fingerprint": "history",
    "evaluate_gates": "gates",
    "experiment_lock": "lock",
    "find_reusable": "history",
    "finished_entries": "reuse",
    "gates_summary_lines": "gates",
    "gates_to_dict": "gates",
    "gates_to_junit": "gates",
    "history_table": "history",
    "inputs_key": "history",
    "leakage_counts": "history",
    "leakage_fraction": "history",
    "overall_status": "gates",
    "previous_record": "history",
    "prune_cache": "retention",
    "prune_runs": "retention",
    "read_history": "history",
    "read_latest": "history",
    "register_gate": "gates",
    "record_from_results": "history",
    "record_metric": "history",
    "reusable_run": "reuse",
    "run_directories": "retention",
    "trend": "history",
    "validate_record": "history",
    "write_latest": "history",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
