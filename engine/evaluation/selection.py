"""Which backbone is the best: chosen on the validation split only, never on test."""

from __future__ import annotations

from typing import Sequence


def select_best(entries: Sequence) -> dict | None:
    """The finished entry with the highest validation macro-F1, or None when none finished.

    ``entries``: typed ``BackboneResult`` objects (the pipeline) or their results.json dicts.
    Ties (common when validation is easy) go to higher validation accuracy, then to the
    better-calibrated model: lower validation log loss.
    """
    entries = [e.to_dict() if hasattr(e, "to_dict") else e for e in entries]
    ok = [e for e in entries if e.get("status") == "ok" and e.get("validation")]
    if not ok:
        return None
    best = max(ok, key=lambda e: (e["validation"]["macro_f1"], e["validation"]["accuracy"],
                                  -e["validation"].get("log_loss", 0.0)))
    return {"name": best["name"], "selected_by": "validation macro_f1"}


__all__ = ["select_best"]
