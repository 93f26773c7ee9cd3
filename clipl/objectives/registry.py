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

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Callable, Optional

from torch import nn

from clipl.registry import Registry, did_you_mean


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


OBJECTIVES: Registry[tuple[type, type]] = Registry("objective")
"""name -> (objective config dataclass, module class built as ``cls(cfg)``). The built-in objectives
register themselves when ``clipl.objectives`` (whose ``__init__`` imports them) is imported."""


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
        OBJECTIVES.register(name, (config, cls), same=lambda old, new: all(map(same, old, new)))
        return cls

    return deco


def _lookup(name: str) -> tuple[type, type]:
    return OBJECTIVES.get(name)


def list_objectives() -> list[str]:
    """Names of the registered objectives, sorted."""
    return OBJECTIVES.names()


def objective_config_class(name: str) -> type:
    """The config dataclass registered for objective ``name``."""
    return _lookup(name)[0]


def objective_config(name: str, /, **overrides) -> ObjectiveConfig:
    """A default config instance of objective ``name`` (fields replaced by ``overrides``)."""
    config_cls = _lookup(name)[0]
    valid = {f.name for f in fields(config_cls)}
    for key in overrides:
        if key not in valid:
            raise KeyError(f"{config_cls.__name__} has no field {key!r}.{did_you_mean(key, sorted(valid))}")
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
