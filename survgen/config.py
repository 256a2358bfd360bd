"""Stage configs as dataclasses: saved into run.json, read back on --resume, overridden by flags."""

from __future__ import annotations

import dataclasses
import typing


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


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
        nested = next((t for t in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(t)), None)
        kwargs[name] = config_from_dict(nested, value) if nested and isinstance(value, dict) else value
    return cls(**kwargs)


def with_overrides(cfg, **given):
    """A copy of `cfg` with the non-None values of `given` applied; `train_*` keys go to `cfg.train`."""
    train = {k[len("train_"):]: v for k, v in given.items() if k.startswith("train_") and v is not None}
    own = {k: v for k, v in given.items() if not k.startswith("train_") and v is not None}
    if train:
        own["train"] = dataclasses.replace(cfg.train, **train)
    return dataclasses.replace(cfg, **own)
