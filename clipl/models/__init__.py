"""Model zoo: registered towers, presets and the CLIPModel that pairs them."""

from clipl.models.config import ModelConfig
from clipl.models.registry import (
    build_tower,
    list_archs,
    list_presets,
    preset,
    register,
    register_preset,
    tower_config_class,
)


_WEIGHTS_API = ("load_model", "load_checkpoint", "load_state_dict_file", "export_state_dict",
                "infer_model_config", "check_state_dict", "resolve_architecture")


# Submodules reachable as attributes after a plain `import clipl` (clipl.models.weights.load_model).
_LAZY_SUBMODULES = ("weights", "sources", "metadata", "open_clip_format", "hf_format", "export", "init_from")


def __getattr__(name):
    # Weight import/export, loaded on first use so `import clipl` does not import every backbone.
    if name in _WEIGHTS_API:
        from clipl.models import weights

        return getattr(weights, name)
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"clipl.models.{name}")
    raise AttributeError(f"module 'clipl.models' has no attribute {name!r}")


def build_model(name_or_cfg, **overrides):
    """Build a CLIPModel from a preset name (with top-level ModelConfig overrides) or a ModelConfig."""
    from clipl.models.clip import CLIPModel

    cfg = preset(name_or_cfg, **overrides) if isinstance(name_or_cfg, str) else name_or_cfg
    return CLIPModel.from_config(cfg)


__all__ = [
    *_WEIGHTS_API,
    "ModelConfig",
    "build_model",
    "build_tower",
    "list_archs",
    "list_presets",
    "preset",
    "register",
    "register_preset",
    "tower_config_class",
]
