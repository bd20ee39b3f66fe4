"""results.json on disk: the shipped JSON Schemas, the one reader that checks a document against
them, and the one writer (atomic)."""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from engine.atomic import dumps_json, overwrite_in_place, write_json
from engine.errors import InputError

#: Must equal the version in engine/schemas/results.schema.json ($id and schema_version const).
SCHEMA_VERSION = 1


def number(value: Any) -> float | None:
    """A metric value read from results.json as a float; None for a missing, boolean, non-numeric
    or NaN value (a value that was not measured must not pass for a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def read_results(run_dir: Path) -> dict:
    """``run_dir/results.json``, checked against the shipped schema; InputError names what is wrong.

    The one reader of results.json for render, evaluate, resume and reuse, so every command rejects
    a broken file with the same message instead of failing somewhere inside.
    """
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise InputError(f"{str(run_dir)!r} is not a run directory: it has no results.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{str(path)!r} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}") from None
    validate_results(data, path)
    return data


def validate_results(data: Any, path: Path | str) -> None:
    """Raise InputError unless ``data`` is a results.json document this auditrun reads.

    A different schema_version gets its own message (the file may be fine for another auditrun);
    anything else names the first failing JSON path, e.g. ``at $.backbones[0].status: 'maybe' is
    not one of ['ok', 'failed']``.
    """
    if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{str(path)!r} has schema_version {data.get('schema_version')!r}; "
                         f"this auditrun reads version {SCHEMA_VERSION}")
    problem = number_problem(data) or schema_problem(data, "results")
    if problem:
        raise InputError(f"{str(path)!r} is not a valid auditrun results file: {problem}")


def write_results(run_dir: Path, data: dict, *, in_place: bool = False) -> Path:
    """results.json, atomically; ``in_place``: compact JSON over the old file's own blocks (a full
    disk's last resort, ``atomic.overwrite_in_place``)."""
    path = Path(run_dir) / "results.json"
    if in_place:
        return overwrite_in_place(path, dumps_json(data, compact=True).encode("utf-8"))
    return write_json(path, data)


# ------------------------------------------------------------------------------------------------
# Shipped JSON Schemas (engine/schemas/*.schema.json, see docs/results-schema.md)


def load_schema(name: str) -> dict:
    """The shipped JSON Schema ``name``: ``"results"`` or ``"history-record"``."""
    resource = importlib.resources.files("engine") / "schemas" / f"{name}.schema.json"
    return json.loads(resource.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


def schema_problem(instance: Any, name: str) -> str | None:
    """``"at <JSON path>: <what>"`` for the most relevant way ``instance`` breaks schema ``name``,
    or None when it is valid."""
    error = best_match(_validator(name).iter_errors(instance))
    if error is None:
        return None
    return f"at {json_path(error.absolute_path)}: {_describe(error)}"


#: Largest magnitude of any number in results.json and history.jsonl: the integers a float holds
#: exactly. The schemas bound each key more tightly (rates 0..1, counts >= 0, seconds <= 1e9).
MAX_MAGNITUDE = 2 ** 53


def number_problem(instance: Any, parts: tuple = ()) -> str | None:
    """``"at <JSON path>: ..."`` for the first number that is not finite (a bare NaN or Infinity,
    or 1e999, which JSON parsers read as infinity) or lies beyond +-2**53, anywhere in the
    document (under keys the schema does not name too); None when every number is in range."""
    if isinstance(instance, bool):
        return None
    if isinstance(instance, (int, float)):
        if isinstance(instance, float) and not math.isfinite(instance):
            return f"at {json_path(parts)}: {instance!r} is not a finite number"
        if abs(instance) > MAX_MAGNITUDE:
            shown = f"{instance:.6g}" if isinstance(instance, float) else f"an integer of {len(str(abs(instance)))} digits"
            return f"at {json_path(parts)}: {shown} is out of range (numbers are within +-2**53)"
        return None
    if isinstance(instance, dict):
        items = instance.items()
    elif isinstance(instance, list):
        items = enumerate(instance)
    else:
        return None
    for key, value in items:
        problem = number_problem(value, parts + (key,))
        if problem:
            return problem
    return None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def json_path(parts: Iterable[str | int]) -> str:
    """``$.backbones[0].test['per class']``: the JSONPath of a location in a document."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


_SHOWN = 60  # longest instance repr quoted in a message; the message must stay one readable line


def _describe(error: ValidationError) -> str:
    """jsonschema's message, with a large instance (a whole backbone block) summarised."""
    message = error.message
    shown = repr(error.instance)
    if len(shown) > _SHOWN:
        message = message.replace(shown, _summary(error.instance))
    message = " ".join(message.split())
    return message if len(message) <= 300 else message[:297] + "..."


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return repr(value)[:_SHOWN] + "..."

