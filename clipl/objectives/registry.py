"""Registry of training objectives: a config dataclass (with a ``name`` discriminator) + a module.

A new objective is one file::

    @dataclass
    class MyLossConfig(ObjectiveConfig):
        name: str = "my_loss"

    @register_objective("my_loss", config=MyLossConfig)
    class MyLoss(nn.Module):
        uses_logit_bias = False
        def __init__(self, cfg: MyLossConfig): ...
        def forward(self, image_features, text_features, logit_scale, logit_bias=None): ...
"""

from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Callable, Optional

from torch import nn


@dataclass
class ObjectiveConfig:
    """Fields every objective config carries; subclasses set their own defaults."""

    name: str = ""
    """Registered objective name; selects the loss module (e.g. "clip", "siglip")."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log inverse temperature the model builder gives ``logit_scale``."""
    init_logit_bias: Optional[float] = None
    """Initial logit bias the model builder gives ``logit_bias``; None: the model has no bias."""
    max_logit_scale: Optional[float] = 100.0
    """Upper bound on the effective scale exp(logit_scale), applied inside the loss; None: no bound."""
    check_batch_sizes: bool = True
    """Distributed only: verify every rank has the same local batch (one tiny all-gather per step)."""


_OBJECTIVES: dict[str, tuple[type, type]] = {}

# Importing these registers the built-in objectives; done lazily so that the registry module
# itself has no import cycle with them.
_BUILTIN_MODULES = ("clipl.objectives.contrastive", "clipl.objectives.sigmoid")
_loaded = False


def _ensure_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def register_objective(name: str, config: type) -> Callable[[type], type]:
    """Class decorator registering an objective module built as ``cls(cfg)`` from ``config``."""
    if not is_dataclass(config) or "name" not in {f.name for f in fields(config)}:
        raise TypeError(f"{config.__name__} must be a dataclass with a `name` field")
    if config().name != name:
        raise ValueError(f"{config.__name__}.name defaults to {config().name!r}, expected {name!r}")

    def deco(cls: type) -> type:
        if not isinstance(getattr(cls, "uses_logit_bias", None), bool):
            raise TypeError(f"objective {cls.__name__} must define a bool `uses_logit_bias`")
        # A recipe file executed twice defines new but identical classes: not a name clash.
        same = lambda a, b: f"{a.__module__}.{a.__qualname__}" == f"{b.__module__}.{b.__qualname__}"  # noqa: E731
        if name in _OBJECTIVES and not all(map(same, _OBJECTIVES[name], (config, cls))):
            raise ValueError(f"objective {name!r} is already registered")
        _OBJECTIVES[name] = (config, cls)
        return cls

    return deco


def _lookup(name: str) -> tuple[type, type]:
    _ensure_builtins()
    if name not in _OBJECTIVES:
        close = difflib.get_close_matches(str(name), list(_OBJECTIVES), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown objective {name!r}.{hint} Known: {', '.join(sorted(_OBJECTIVES))}")
    return _OBJECTIVES[name]


def list_objectives() -> list[str]:
    """Names of the registered objectives, sorted."""
    _ensure_builtins()
    return sorted(_OBJECTIVES)


def objective_config_class(name: str) -> type:
    """The config dataclass registered for objective ``name``."""
    return _lookup(name)[0]


def objective_config(name: str, /, **overrides) -> ObjectiveConfig:
    """A default config instance of objective ``name`` (fields replaced by ``overrides``)."""
    config_cls = _lookup(name)[0]
    valid = {f.name for f in fields(config_cls)}
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"{config_cls.__name__} has no field {key!r}.{hint}")
    if "name" in overrides and overrides["name"] != name:
        raise ValueError(f"cannot override `name` of objective {name!r} with {overrides['name']!r}")
    return config_cls(**overrides)


def build_objective(cfg: ObjectiveConfig) -> nn.Module:
    """Build the objective module described by ``cfg`` (dispatch on ``cfg.name``)."""
    config_cls, cls = _lookup(getattr(cfg, "name", None))
    if not isinstance(cfg, config_cls):
        raise TypeError(
            f"objective {cfg.name!r} expects a {config_cls.__name__}, got {type(cfg).__name__}"
        )
    return cls(cfg)
