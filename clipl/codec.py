"""Dataclass configs <-> plain containers (dicts, lists, scalars): the one codec every layer shares.

Plain form is what a checkpoint's ``hyper_parameters``, a YAML file or an export's metadata holds
(safe for ``torch.load(weights_only=True)``). Fields typed ``Any`` hold one of several registered
dataclasses (a tower config, an objective config); in plain form they carry a discriminator field
(``arch`` for towers, ``name`` for objectives) that selects the class again on the way back, so a
saved config reloads into exactly the dataclasses it came from.

This module is a leaf: the packages that own the polymorphic configs register how to find a class
from its discriminator (clipl.models.registry registers ``arch``, clipl.objectives.registry ``name``),
so clipl.models can write and read its ModelConfig without importing clipl.config, and
clipl.config.io builds YAML round trips on top of it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Union

from omegaconf import OmegaConf

from clipl.registry import Registry

DISCRIMINATORS: Registry[Callable[[str], type]] = Registry("config discriminator field")
"""Discriminator field name -> the function giving the dataclass for a value of that field."""


def register_discriminator(field: str, find: Callable[[str], type]) -> None:
    """Plain dicts with key ``field`` in an ``Any``-typed field become ``find(value)``'s dataclass.

    Registering the same function again (its module imported twice) is allowed.
    """
    DISCRIMINATORS.register(field, find, same=lambda old, new: old.__qualname__ == new.__qualname__
                            and old.__module__ == new.__module__)


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
        for key in DISCRIMINATORS:
            if key in value:
                target = DISCRIMINATORS.get(key)(value[key])
                break
    return from_container(target, value, path) if target is not None else value
