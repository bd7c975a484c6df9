"""Experiment recipes: YAML files that fill typed config dataclasses (``configs/*.yaml``, TRL style).

YAML only fills the dataclass; validation stays in each dataclass's ``__post_init__``. Nested dataclass
fields are filled from nested mappings, tuples from lists; an unknown key is an error that lists the
valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def help_field(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with ``metadata={"help": text}`` (shown by ``describe``)."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


def from_mapping(cls: type[T], values: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` from a (nested) mapping; ValueError naming an unknown key."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        sub = _dataclass_type(hints.get(name))
        if sub is not None and isinstance(value, Mapping):
            value = from_mapping(sub, value)
        elif isinstance(value, list) and "tuple" in str(hints.get(name)):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def load_recipe(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """``cls`` filled from the YAML file at ``path`` (None = defaults), then from ``overrides`` (None values
    are ignored, so unset command-line flags keep the recipe's value)."""
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path} must hold a YAML mapping of {cls.__name__} fields, got {type(loaded).__name__}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    """JSON/YAML-ready dict of a (nested) config dataclass; tuples become lists."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if hasattr(v, "value") and not isinstance(v, (int, float, str, bool)):
            return v.value  # enums (Prompting)
        return v

    return conv(config)
