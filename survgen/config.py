"""Configs as dataclasses, one mechanism for all: stage configs (saved into run.json, read back on --resume)
and model configs (saved next to the weights). Reading one back refuses unknown keys and wrong types."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


@contextmanager
def config_file(path: str | Path) -> Iterator[None]:
    """Errors of reading a config file (bad JSON, an unknown key, a wrong type) as one naming the file."""
    try:
        yield
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is damaged") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_config(cls, path: str | Path):
    """The config dataclass `cls` from its JSON file."""
    with config_file(path):
        return config_from_dict(cls, json.loads(Path(path).read_text()))

def config_from_dict(cls, d: dict):
    """Rebuild a (nested) config dataclass from `asdict` output; unknown keys are refused."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} options: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        kind = hints[name]
        if not _fits(value, kind):
            raise ValueError(f"option {name} must be {_type_name(kind)}, not {value!r}")
        nested = next((t for t in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(t)), None)
        kwargs[name] = config_from_dict(nested, value) if nested and isinstance(value, dict) else value
    return cls(**kwargs)

def _fits(value, kind) -> bool:
    """Whether a JSON value can stand for a field of type `kind` (an int for a float, a list for a tuple)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, k) for k in args)
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(kind):
        return isinstance(value, dict)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, k) for v, k in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    return isinstance(value, kind) if isinstance(kind, type) else True

def _type_name(kind) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(k) for k in typing.get_args(kind))
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))
