"""clipl.registry.Registry: the one name table behind towers, objectives, schedules, strategies, ..."""

from __future__ import annotations

import pytest

from clipl.models.registry import ARCHS, PRESETS
from clipl.objectives.registry import OBJECTIVES
from clipl.optim import SCHEDULES
from clipl.registry import Registry, check_one_of, did_you_mean
from clipl.training.config import BUILTIN_STRATEGIES, STRATEGIES
from clipl.training.strategies import register_strategy


def test_register_get_names_suggest():
    reg: Registry[int] = Registry("colour scheme")
    reg.register("viridis", 1)
    reg.decorator("magma")(2)
    assert reg.get("magma") == 2 and reg["viridis"] == 1
    assert reg.names() == ["magma", "viridis"] and list(reg) == ["viridis", "magma"]
    assert reg.suggest("viridus") == ["viridis"]
    with pytest.raises(KeyError, match=r"unknown colour scheme 'viridus'\. Did you mean 'viridis'\? Known: magma, viridis"):
        reg.get("viridus")
    with pytest.raises(ValueError, match="colour scheme 'magma' is already registered"):
        reg.register("magma", 3)
    reg.register("magma", 2, same=lambda old, new: old == new)  # the same thing again is not a clash
    reg.unregister("magma")
    assert "magma" not in reg


def test_field_named_errors_and_choices():
    reg: Registry[int] = Registry("activation", error=ValueError)
    reg.register("gelu", 1)
    with pytest.raises(ValueError, match=r"image.act='gelu2' is not a known activation\. Did you mean 'gelu'\?"):
        reg.get("gelu2", "image.act")
    with pytest.raises(ValueError, match=r"eval.linear_probe_position='befor' is not one of 'after', 'before'\. Did you mean 'before'"):
        check_one_of("eval.linear_probe_position", "befor", ("after", "before"))
    assert did_you_mean("zzz", ["gelu"]) == ""


def test_the_builtin_tables_are_registries():
    assert {"vit", "modified_resnet", "text_transformer", "timm", "hf_text"} <= set(ARCHS.names())
    assert "tiny_vit" in PRESETS and {"clip", "siglip"} <= set(OBJECTIVES.names())
    assert SCHEDULES.names() == ["constant", "cosine", "linear"]
    # clipl.training.strategies (imported above) registers a builder for every built-in name the config accepts
    assert set(BUILTIN_STRATEGIES) == {"auto", "ddp", "deepspeed"} <= set(STRATEGIES.names())


def test_a_registered_strategy_is_a_valid_config_value():
    from clipl.training.config import TrainerConfig

    with pytest.raises(ValueError, match=r"trainer\.strategy='mine' is not one of 'auto', 'ddp', 'deepspeed'"):
        TrainerConfig(strategy="mine")
    register_strategy("mine")(lambda cfg, plan: "auto")
    try:
        assert TrainerConfig(strategy="mine").strategy == "mine"
    finally:
        STRATEGIES.unregister("mine")
