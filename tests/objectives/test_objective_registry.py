"""The objective registry: configs by name, building, and registering a new objective."""

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from clipl.objectives import (
    ClipLoss,
    ClipLossConfig,
    ObjectiveConfig,
    SigLipLoss,
    SigLipLossConfig,
    build_objective,
    list_objectives,
    objective_class,
    objective_config,
    objective_config_class,
    register_objective,
)


def test_builtin_configs_and_init_values():
    assert {"clip", "siglip"} <= set(list_objectives())
    clip = objective_config("clip")
    assert isinstance(clip, ClipLossConfig) and clip.name == "clip"
    assert not hasattr(clip, "init_logit_scale") and not hasattr(clip, "init_logit_bias")  # ModelConfig's
    assert clip.max_logit_scale == 100.0
    sig = objective_config("siglip")
    assert isinstance(sig, SigLipLossConfig)
    assert sig.max_logit_scale is None
    assert objective_class("siglip").model_init == pytest.approx({"init_logit_scale": math.log(10),
                                                                  "init_logit_bias": -10.0})
    assert objective_class("siglip").uses_logit_bias and objective_class("clip").model_init is None
    assert objective_config_class("siglip") is SigLipLossConfig


@pytest.mark.parametrize("name,cls,bias", [("clip", ClipLoss, False), ("siglip", SigLipLoss, True)])
def test_build_objective(name, cls, bias):
    loss_fn = build_objective(objective_config(name))
    assert isinstance(loss_fn, cls) and loss_fn.uses_logit_bias is bias
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    loss = loss_fn(x, x, torch.tensor(1.0), torch.tensor(-1.0))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_overrides_and_errors():
    assert objective_config("clip", max_logit_scale=50.0).max_logit_scale == 50.0
    with pytest.raises(KeyError, match="max_logit_scale"):
        objective_config("clip", max_logit_scal=1.0)
    with pytest.raises(KeyError, match="'siglip'"):
        objective_config("sigliip")
    with pytest.raises(ValueError, match="objective.name='siglip' does not name this ClipLossConfig"):
        ClipLossConfig(name="siglip")  # refused when made ...
    renamed = ClipLossConfig()
    renamed.name = "siglip"  # ... and, set afterwards (no __post_init__), when built
    with pytest.raises(TypeError, match="SigLipLossConfig"):
        build_objective(renamed)
    with pytest.raises(ValueError, match="name"):
        objective_config("clip", name="siglip")


@pytest.fixture
def clean_registry():
    from clipl.objectives import registry

    saved = set(registry.OBJECTIVES)
    yield
    # Tests parametrised over list_objectives() elsewhere must not see the test-only objective.
    for name in set(registry.OBJECTIVES) - saved:
        registry.OBJECTIVES.unregister(name)


def test_register_a_new_objective_in_one_file(clean_registry):
    @dataclass
    class CosineConfig(ObjectiveConfig):
        name: str = "test_cosine"
        """Registered objective name."""

    @register_objective("test_cosine", config=CosineConfig)
    class Cosine(nn.Module):
        uses_logit_bias = False

        def __init__(self, cfg):
            super().__init__()

        def forward(self, image_features, text_features, logit_scale, logit_bias=None):
            return (1 - (image_features * text_features).sum(-1)).mean().float()

    assert "test_cosine" in list_objectives()
    x = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    assert build_objective(objective_config("test_cosine"))(x, x, None).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("test_cosine", config=CosineConfig)(ClipLoss)
    with pytest.raises(ValueError, match="expected 'other'"):
        register_objective("other", config=CosineConfig)
