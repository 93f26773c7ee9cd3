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


def build_model(name_or_cfg, **overrides):
    """Build a CLIPModel from a preset name (with top-level ModelConfig overrides) or a ModelConfig."""
    from clipl.models.clip import CLIPModel

    cfg = preset(name_or_cfg, **overrides) if isinstance(name_or_cfg, str) else name_or_cfg
    return CLIPModel.from_config(cfg)


__all__ = [
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
