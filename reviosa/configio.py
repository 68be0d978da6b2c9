"""Typed config dataclasses from JSON / YAML dicts, strictly, guided by the classes' type hints.

One builder serves every config in the project (the model's and the trainer's): nested dataclasses,
optional sections, lists of dataclasses and tuples are read off the annotations, so no table of
nested types has to be kept in step with the classes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def from_dict(cls: type, data: Any, path: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; an unknown field or a wrong kind of value raises ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known: {sorted(names)}")
    return cls(**{name: _convert(hints[name], value, f"{path}.{name}") for name, value in data.items()})


def _convert(tp: Any, value: Any, path: str) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _convert(options[0], value, path) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
        return [from_dict(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple and isinstance(value, list):  # JSON and YAML have no tuples
        return tuple(value)
    if tp is float and not isinstance(value, bool):
        # YAML 1.1 reads "1e-4" (no dot) as a string and "1" as an int: a float field takes both.
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: expected a number, got {value!r}") from None
    return value
