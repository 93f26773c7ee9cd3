"""Registry of training objectives: a config dataclass (with a ``name`` discriminator) + a module.

A new objective is one file::

    @dataclass
    class MyLossConfig(ObjectiveConfig):
        name: str = "my_loss"

    @register_objective("my_loss", config=MyLossConfig)
    class MyLoss(nn.Module):
        uses_logit_bias = False     # True: the model must have a logit bias (model.init_logit_bias)
        model_init = None           # or {"init_logit_scale": ..., "init_logit_bias": ...}: see below
        def __init__(self, cfg: MyLossConfig): ...
        def forward(self, image_features, text_features, logit_scale, logit_bias=None): ...

The initial temperature and bias are the model's parameters and live on ``ModelConfig`` only
(``model.init_logit_scale`` / ``model.init_logit_bias``); an objective config holds what the loss
itself does (``max_logit_scale``, the clamp). An objective that needs a bias (``uses_logit_bias``)
may name the model init it was designed for in ``model_init``: ``objective=NAME`` on the command line
applies it to a model left at ModelConfig's defaults (clipl.config.parse), and a run whose model has
no bias is refused when the config resolves (:func:`check_model_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, Optional

from torch import nn

from clipl.codec import register_discriminator
from clipl.registry import Registry, did_you_mean


@dataclass
class ObjectiveConfig:
    """Fields every objective config carries; subclasses set their own defaults."""

    name: str = ""
    """Registered objective name; selects the loss module (e.g. "clip", "siglip")."""
    max_logit_scale: Optional[float] = 100.0
    """Upper bound on the effective scale exp(logit_scale), applied inside the loss; None: no bound."""
    check_batch_sizes: bool = True
    """Distributed only: verify every rank has the same local batch (one tiny all-gather per step)."""

    def __post_init__(self) -> None:
        if self.max_logit_scale is not None and self.max_logit_scale <= 0:
            raise ValueError(f"objective.max_logit_scale must be > 0 or null, got {self.max_logit_scale}")
        _check_name(self)


OBJECTIVES: Registry[tuple[type, type]] = Registry("objective")
"""name -> (objective config dataclass, module class built as ``cls(cfg)``). The built-in objectives
register themselves when ``clipl.objectives`` (whose ``__init__`` imports them) is imported."""


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_name(cfg: ObjectiveConfig) -> None:
    """``name`` is the discriminator of a registered config class: it must be that class's own name
    (``objective.name=siglip`` on a ClipLossConfig would build neither loss). A class not registered
    yet (while ``register_objective`` checks its default) is not checked."""
    mine = [n for n in OBJECTIVES if _qualname(OBJECTIVES.get(n)[0]) == _qualname(type(cfg))]
    if mine and cfg.name not in mine:
        raise ValueError(f"objective.name={cfg.name!r} does not name this {type(cfg).__name__} ({mine[0]!r}); "
                         f"switch objectives with objective=NAME (one of {', '.join(OBJECTIVES.names())})")


def register_objective(name: str, config: type) -> Callable[[type], type]:
    """Class decorator registering an objective module built as ``cls(cfg)`` from ``config``."""
    if not is_dataclass(config) or "name" not in {f.name for f in fields(config)}:
        raise TypeError(f"{config.__name__} must be a dataclass with a `name` field")
    if config().name != name:
        raise ValueError(f"{config.__name__}.name defaults to {config().name!r}, expected {name!r}")

    def deco(cls: type) -> type:
        if not isinstance(getattr(cls, "uses_logit_bias", None), bool):
            raise TypeError(f"objective {cls.__name__} must define a bool `uses_logit_bias`")
        init = getattr(cls, "model_init", None)
        if init is not None and set(init) != {"init_logit_scale", "init_logit_bias"}:
            raise TypeError(f"objective {cls.__name__}.model_init must set init_logit_scale and init_logit_bias")
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


# A plain objective config carries its `name`: clipl.codec reads it back into this class.
register_discriminator("name", objective_config_class)


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


def objective_class(name: str) -> type:
    """The module class registered for objective ``name`` (its ``uses_logit_bias``, ``model_init``)."""
    return _lookup(name)[1]


def model_init_hint(name: str) -> str:
    """The overrides that give a model the init objective ``name`` was designed for (for messages)."""
    init = getattr(objective_class(name), "model_init", None)
    if init is None:
        return "model.init_logit_bias=<initial bias>"
    return " ".join(f"model.{k}={round(v, 4):g}" for k, v in sorted(init.items()))


def check_model_fits(model: Any, objective: Any) -> None:
    """Refuse an objective that needs a logit bias with a model built without one (ValueError).

    The model's ``init_logit_bias`` is the only source of the bias: a loss cannot invent one, and
    substituting a value here would be a second, hidden source of truth.
    """
    name = getattr(objective, "name", None)
    if name not in OBJECTIVES or not objective_class(name).uses_logit_bias:
        return
    if getattr(model, "init_logit_bias", None) is None:
        raise ValueError(
            f"objective {name!r} needs a logit bias and model.init_logit_bias is null (the model would have "
            f"no bias parameter): set {model_init_hint(name)} (the init {name!r} was designed for; "
            f"objective={name} on the command line sets it on a model left at ModelConfig's defaults)")


def build_objective(cfg: ObjectiveConfig) -> nn.Module:
    """Build the objective module described by ``cfg`` (dispatch on ``cfg.name``)."""
    config_cls, cls = _lookup(getattr(cfg, "name", None))
    if not isinstance(cfg, config_cls):
        raise TypeError(
            f"objective {cfg.name!r} expects a {config_cls.__name__}, got {type(cfg).__name__}"
        )
    return cls(cfg)
