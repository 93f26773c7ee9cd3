"""Converting run configs to plain containers / YAML and back.

Fields typed ``Any`` hold one of several registered dataclasses (a tower, an objective); in plain
form they carry a discriminator (``arch`` for towers, ``name`` for objectives) that selects the class
again on the way back, so a saved config reloads into exactly the dataclasses it came from.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Union

from omegaconf import OmegaConf


def _tower_class(data: dict) -> type:
    from clipl.models import tower_config_class

    return tower_config_class(data["arch"])


def _objective_class(data: dict) -> type:
    from clipl.objectives import objective_config_class

    return objective_config_class(data["name"])


# discriminator key -> how to find the dataclass of an `Any` field's plain dict
_DISCRIMINATORS: dict[str, Callable[[dict], type]] = {"arch": _tower_class, "name": _objective_class}


def to_container(cfg: Any) -> dict:
    """A dataclass config as plain dicts/lists/scalars (safe for torch.load(weights_only=True))."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, throw_on_missing=False)


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is Union:  # Optional[SomeConfig]
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_container(cls: type, data: dict, path: str = "") -> Any:
    """Rebuild dataclass ``cls`` from plain ``data`` (as written by :func:`to_container`, perhaps by an
    older clipl: a class with an ``upgrade_legacy(data) -> data`` static method renames old fields)."""
    upgrade = getattr(cls, "upgrade_legacy", None)
    if upgrade is not None:
        data = upgrade(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeyError(f"{path or cls.__name__}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        return value
    target = _dataclass_of(tp)
    if target is None:
        for key, find in _DISCRIMINATORS.items():
            if key in value:
                target = find(value)
                break
    return from_container(target, value, path) if target is not None else value


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (resolved); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


def load_config(path: str | Path, cls: type | None = None) -> Any:
    """Read a YAML written by :func:`save_config` back into dataclasses (RunConfig by default)."""
    if cls is None:
        from clipl.config.schema import RunConfig

        cls = RunConfig
    data = OmegaConf.to_container(OmegaConf.load(Path(path)), resolve=True)
    return from_container(cls, data)
