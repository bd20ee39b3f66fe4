"""Typed blocks of results.json: dataclasses that read themselves from JSON and write themselves back.

One small converter instead of a hand-written ``from_dict``/``to_dict`` per block: a block's field
types say how its JSON value is read (a nested block, ``list[Block]``, ``dict[str, Block]``,
``Block | None``, or a plain JSON value kept as it is). Three rules keep a round trip exact, so the
typed tree can sit between every writer and reader without changing one byte of results.json:

- a key the document lacks reads as the field's default and is left out again on writing
  (unless a stage sets it meanwhile);
- a key the block does not declare (a newer writer's) is kept in ``extra`` and written back last;
- a field declared with ``optional()`` is left out while it is None (a block a stage did not
  measure is absent, not null).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T", bound="Record")

_OMIT_NONE = "auditrun.omit_none"
_KEY = "auditrun.key"


def optional(default: Any = None, *, key: str | None = None) -> Any:
    """A field results.json holds only when a stage measured it: omitted while None."""
    meta = {_OMIT_NONE: True, **({_KEY: key} if key else {})}
    return dataclasses.field(default=default, metadata=meta)


def keyed(key: str, default: Any = None, **kwargs: Any) -> Any:
    """A field whose JSON key is not a Python name (``"per class"``, ``"class"``)."""
    if "default_factory" in kwargs:
        return dataclasses.field(metadata={_KEY: key}, **kwargs)
    return dataclasses.field(default=default, metadata={_KEY: key}, **kwargs)


def items(default_factory=list) -> Any:
    return dataclasses.field(default_factory=default_factory)


class Record:
    """Base of every typed results block (a dataclass; see the module docstring for its JSON rules)."""

    # ``extra`` (keys of the JSON object the block does not declare, written back after the
    # declared ones) is added by @record; ``_absent`` names the fields the document lacked.
    _absent = frozenset()

    @classmethod
    def from_json(cls: type[T], data: dict) -> T:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        spec = _spec(cls)
        kwargs, absent = {}, []
        for name, key, hint, _omit in spec:
            if key in data:
                kwargs[name] = _read(hint, data[key])
            else:
                absent.append(name)
        known = {key for _n, key, _h, _o in spec}
        obj = cls(**kwargs)
        obj.extra = {k: v for k, v in data.items() if k not in known}
        obj._absent = frozenset(absent)
        return obj

    def has(self, name: str) -> bool:
        """Whether the block holds field ``name``: the document had the key, or it was set since.

        Readers that must tell an absent key from its stand-in default (a missing ``status`` is
        not "ok") ask this rather than the raw document."""
        return name not in self._absent or not _is_default(type(self), name, getattr(self, name))

    def put(self, name: str, value: Any) -> None:
        """Set field ``name`` from a stage's JSON-form value (a dict, a list of dicts), typed as the
        field declares: what a stage returns becomes the block every later reader reads."""
        hints = {n: h for n, _k, h, _o in _spec(type(self))}
        if name not in hints:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        setattr(self, name, _read(hints[name], value))

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for name, key, _hint, omit in _spec(type(self)):
            value = getattr(self, name)
            if value is None and (omit or name in self._absent):
                continue
            if name in self._absent and _is_default(type(self), name, value):
                continue
            out[key] = _write(value)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


def record(cls: type[T] | None = None, *, kw_only: bool = True):
    """``@record``: a dataclass (keyword-only unless told) with ``extra`` (unknown keys) appended."""
    def wrap(cls: type[T]) -> type[T]:
        cls.__annotations__ = {**cls.__dict__.get("__annotations__", {})}
        cls.__annotations__["extra"] = "dict[str, Any]"
        cls.extra = dataclasses.field(default_factory=dict, repr=False, compare=False, kw_only=True)
        return dataclasses.dataclass(kw_only=kw_only)(cls)

    return wrap(cls) if cls is not None else wrap


@functools.lru_cache(maxsize=None)
def _spec(cls: type) -> tuple[tuple[str, str, Any, bool], ...]:
    hints = typing.get_type_hints(cls, globalns=_namespace(cls), localns={"Any": Any})
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        out.append((f.name, f.metadata.get(_KEY, f.name), hints[f.name], bool(f.metadata.get(_OMIT_NONE))))
    return tuple(out)


def _namespace(cls: type) -> dict:
    import sys

    return vars(sys.modules[cls.__module__])


def _is_default(cls: type, name: str, value: Any) -> bool:
    f = cls.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return False


def _is_record(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Record)


def _read(hint: Any, value: Any) -> Any:
    """``value`` (plain JSON) as ``hint`` says; a value of another shape than declared is kept as
    it is (the schema, checked first, decides what is valid; this only adds types)."""
    if value is None:
        return None
    if _is_record(hint):
        return hint.from_json(value) if isinstance(value, dict) else value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is type(None):
                continue
            if _is_record(arm) and isinstance(value, dict):
                return arm.from_json(value)
            arm_origin = typing.get_origin(arm)
            if arm_origin is list and isinstance(value, list):
                return _read(arm, value)
            if arm_origin is dict and isinstance(value, dict):
                return _read(arm, value)
        return value
    if origin is list and isinstance(value, list):
        (inner,) = typing.get_args(hint) or (Any,)
        return [_read(inner, v) for v in value]
    if origin is dict and isinstance(value, dict):
        args = typing.get_args(hint)
        inner = args[1] if len(args) == 2 else Any
        return {k: _read(inner, v) for k, v in value.items()}
    return value


def _write(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list):
        return [_write(v) for v in value]
    if isinstance(value, tuple):
        return [_write(v) for v in value]
    if isinstance(value, dict):
        return {k: _write(v) for k, v in value.items()}
    return value
