"""Registries of tower architectures and of named model presets.

A tower architecture is a config dataclass (with a unique ``arch`` string field) plus a builder
``builder(cfg, embed_dim) -> nn.Module``. A preset is a function returning a :class:`ModelConfig`.
Dispatch is always on the config's ``arch`` field, never on a model name.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any, Callable

from torch import nn

from clipl.codec import register_discriminator
from clipl.registry import Registry, did_you_mean

# Importing these registers the built-in architectures and presets; done on the first look-up so that
# `import clipl` stays cheap and optional extras (timm, transformers) are only needed when used.
_BUILTIN_MODULES = (
    "clipl.models.backbones.modified_resnet",
    "clipl.models.backbones.vit",
    "clipl.models.backbones.text_transformer",
    "clipl.models.backbones.timm_image",
    "clipl.models.backbones.hf_text",
    "clipl.models.presets",
)
ARCHS: Registry[tuple[type, Callable[[Any, int], nn.Module]]] = Registry("tower architecture", builtins=_BUILTIN_MODULES)
"""arch -> (tower config dataclass, builder(cfg, embed_dim))."""
PRESETS: Registry[Callable[[], Any]] = Registry("model preset", builtins=_BUILTIN_MODULES)
"""preset name -> zero-argument function returning a ModelConfig."""


def _qualname(obj: Any) -> str:
    # A recipe file executed twice defines new but identical classes; that is not a name clash.
    return f"{obj.__module__}.{obj.__qualname__}"


def register(arch: str, config: type) -> Callable:
    """Decorator registering ``builder(cfg, embed_dim)`` for tower configs of type ``config``."""
    if not is_dataclass(config) or "arch" not in {f.name for f in fields(config)}:
        raise TypeError(f"{config.__name__} must be a dataclass with an `arch` field")

    def deco(builder: Callable[[Any, int], nn.Module]) -> Callable[[Any, int], nn.Module]:
        ARCHS.register(arch, (config, builder), same=lambda old, new: _qualname(old[0]) == _qualname(new[0]))
        return builder

    return deco


def register_preset(name: str) -> Callable:
    """Decorator registering a zero-argument function that returns a ModelConfig."""
    return PRESETS.decorator(name)


def list_archs() -> list[str]:
    """Names of the registered tower architectures."""
    return ARCHS.names()


def tower_config_class(arch: str) -> type:
    """The config dataclass registered for ``arch``."""
    return ARCHS.get(arch)[0]


# A plain tower config carries its `arch`: clipl.codec reads it back into this class.
register_discriminator("arch", tower_config_class)


def build_tower(cfg: Any, embed_dim: int) -> nn.Module:
    """Build the tower described by ``cfg`` (dispatch on ``cfg.arch``), projecting to ``embed_dim``."""
    arch = getattr(cfg, "arch", None)
    cls, builder = ARCHS.get(str(arch) if arch is None else arch)
    if not isinstance(cfg, cls):
        raise TypeError(f"tower arch {arch!r} expects a {cls.__name__}, got {type(cfg).__name__}")
    return builder(cfg, embed_dim)


def list_presets() -> list[str]:
    """Names of the registered model presets, sorted."""
    return PRESETS.names()


def preset(name: str, **overrides: Any) -> Any:
    """The ModelConfig of preset ``name`` with top-level fields replaced by ``overrides``."""
    cfg = PRESETS.get(name)()
    if overrides:
        valid = {f.name for f in fields(cfg)}
        for key in overrides:
            if key not in valid:
                raise KeyError(f"unknown field of {type(cfg).__name__} {key!r}.{did_you_mean(key, valid)} "
                               f"Known: {', '.join(sorted(valid))}")
        cfg = replace(cfg, **overrides)
    return cfg
