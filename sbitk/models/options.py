"""An estimator's options checked by name and kind before it is built.

An estimator that names its config dataclass (``config_class``, a class attribute) gets every
option it is given checked against that dataclass's fields and their annotations: an unknown
name is refused with the list of known ones, and a value of the wrong kind (a string for a
number, a number for a list of layer widths, an infinite rate) with the option's name, the kind
it takes and the value found. A field annotated ``tuple[int, ...]`` is a list of sizes (layer
widths): each must be a positive integer. The estimator's own checks of ranges and
combinations run after.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Config:
    ...     features: int
    ...     context: int = 0
    ...     hidden_features: tuple[int, ...] = (64, 64)
    ...     rate: float = 0.1
    >>> check_options(Config, {"hidden_features": [32, 32]}, "example")
    >>> check_options(Config, {"rate": "fast"}, "example")
    Traceback (most recent call last):
    ...
    sbitk.errors.SbitkError: estimator 'example': option rate takes a finite number, got 'fast'
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from sbitk.errors import SbitkError

#: Fields that the data decide, never an option.
DATA_FIELDS = ("features", "context")


def check_options(config_class: type, options: Mapping[str, Any], name: str) -> None:
    """Refuse an option of estimator ``name`` that ``config_class`` has no field for, or whose
    value is not of the field's kind (JSON lists count as tuples)."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    for key, value in options.items():
        if key in DATA_FIELDS:
            raise SbitkError(
                f"estimator {name!r}: {key} is set by the data (the sizes of θ and x), "
                "not an option"
            )
        if key not in fields:
            known = ", ".join(sorted(set(fields) - set(DATA_FIELDS)))
            raise SbitkError(f"estimator {name!r} has no option {key!r}; its options: {known}")
        kind = _kind(hints[key])
        if kind is not None and not _fits(hints[key], value):
            raise SbitkError(f"estimator {name!r}: option {key} takes {kind}, got {value!r}")


def _kind(hint: Any) -> str | None:
    """How ``hint`` reads in an error, or None for a hint this check leaves to the estimator."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    if hint is dict or origin in (dict, Mapping):
        return "a mapping of names to values"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] is int:
            return "a list of sizes (positive integers)"
        inner = _kind(args[0])
        return None if inner is None else f"a list of {inner.removeprefix('a ')}s"
    if origin is Sequence or origin is list:
        return "a list"
    if origin in (typing.Union, types.UnionType):
        kinds = ["null" if a is type(None) else _kind(a) for a in args]
        return None if None in kinds else " or ".join(kinds)
    return None


def _fits(hint: Any, value: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list | tuple) or not all(_fits(args[0], v) for v in value):
            return False
        return args[0] is not int or all(v > 0 for v in value)
    if origin is Sequence or origin is list:
        inner = args[0] if args else Any
        return isinstance(value, list | tuple) and all(_fits(inner, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    return True  # Any, and kinds this check does not know: the estimator's own checks decide


__all__ = ["DATA_FIELDS", "check_options"]
