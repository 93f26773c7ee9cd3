"""Registries of tower architectures and of named model presets.

A tower architecture is a config dataclass (with a unique ``arch`` string field) plus a builder
``builder(cfg, embed_dim) -> nn.Module``. A preset is a function returning a :class:`ModelConfig`.
Dispatch is always on the config's ``arch`` field, never on a model name.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import fields, is_dataclass, replace
from typing import Any, Callable

from torch import nn

_ARCHS: dict[str, tuple[type, Callable[[Any, int], nn.Module]]] = {}
_PRESETS: dict[str, Callable[[], Any]] = {}

# Modules whose import registers the built-in architectures and presets; imported lazily so that
# `import clipl` stays cheap and optional extras (timm, transformers) are only needed when used.
_BUILTIN_MODULES = (
    "clipl.models.backbones.modified_resnet",
    "clipl.models.backbones.vit",
    "clipl.models.backbones.text_transformer",
    "clipl.models.backbones.timm_image",
    "clipl.models.backbones.hf_text",
    "clipl.models.presets",
)
_loaded = False


def _ensure_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _BUILTIN_MODULES:
        importlib.import_module(name)


def _qualname(obj: Any) -> str:
    # A recipe file executed twice defines new but identical classes; that is not a name clash.
    return f"{obj.__module__}.{obj.__qualname__}"


def register(arch: str, config: type) -> Callable:
    """Decorator registering ``builder(cfg, embed_dim)`` for tower configs of type ``config``."""
    if not is_dataclass(config) or "arch" not in {f.name for f in fields(config)}:
        raise TypeError(f"{config.__name__} must be a dataclass with an `arch` field")

    def deco(builder: Callable[[Any, int], nn.Module]) -> Callable[[Any, int], nn.Module]:
        if arch in _ARCHS and _qualname(_ARCHS[arch][0]) != _qualname(config):
            raise ValueError(f"tower architecture {arch!r} is already registered")
        _ARCHS[arch] = (config, builder)
        return builder

    return deco


def register_preset(name: str) -> Callable:
    """Decorator registering a zero-argument function that returns a ModelConfig."""

    def deco(fn: Callable[[], Any]) -> Callable[[], Any]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = fn
        return fn

    return deco


def _unknown(kind: str, name: str, known: list[str]) -> KeyError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))}")


def list_archs() -> list[str]:
    """Names of the registered tower architectures."""
    _ensure_builtins()
    return sorted(_ARCHS)


def tower_config_class(arch: str) -> type:
    """The config dataclass registered for ``arch``."""
    _ensure_builtins()
    if arch not in _ARCHS:
        raise _unknown("tower architecture", arch, list(_ARCHS))
    return _ARCHS[arch][0]


def build_tower(cfg: Any, embed_dim: int) -> nn.Module:
    """Build the tower described by ``cfg`` (dispatch on ``cfg.arch``), projecting to ``embed_dim``."""
    _ensure_builtins()
    arch = getattr(cfg, "arch", None)
    if arch not in _ARCHS:
        raise _unknown("tower architecture", str(arch), list(_ARCHS))
    cls, builder = _ARCHS[arch]
    if not isinstance(cfg, cls):
        raise TypeError(f"tower arch {arch!r} expects a {cls.__name__}, got {type(cfg).__name__}")
    return builder(cfg, embed_dim)


def list_presets() -> list[str]:
    """Names of the registered model presets, sorted."""
    _ensure_builtins()
    return sorted(_PRESETS)


def preset(name: str, **overrides: Any) -> Any:
    """The ModelConfig of preset ``name`` with top-level fields replaced by ``overrides``."""
    _ensure_builtins()
    if name not in _PRESETS:
        raise _unknown("model preset", name, list(_PRESETS))
    cfg = _PRESETS[name]()
    if overrides:
        valid = {f.name for f in fields(cfg)}
        for key in overrides:
            if key not in valid:
                raise _unknown(f"field of {type(cfg).__name__}", key, sorted(valid))
        cfg = replace(cfg, **overrides)
    return cfg
