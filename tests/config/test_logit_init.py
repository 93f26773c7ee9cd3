"""The initial temperature/bias has one effective source per run; setting the ignored one is an error."""

from __future__ import annotations

import math

import pytest

from clipl.config import ConfigError, parse
from clipl.config.schema import RunConfig
from clipl.models import preset
from clipl.module import CLIPModule


def _base() -> RunConfig:
    return RunConfig(model=preset("tiny_vit"))


def _built(cfg: RunConfig) -> tuple[float, float | None]:
    m = CLIPModule(cfg).model_config()
    return m.init_logit_scale, m.init_logit_bias


def test_the_used_side_takes_effect():
    cfg = parse(_base(), ["model.init_logit_scale=2.0"])  # clip: the model's values
    assert _built(cfg) == (2.0, None)
    cfg = parse(_base(), ["objective=siglip", "objective.init_logit_scale=1.5", "objective.init_logit_bias=-5"])
    assert _built(cfg) == (1.5, -5.0)  # siglip on a model without a bias: the objective's values
    cfg = parse(_base(), ["objective=siglip", "model.init_logit_bias=-3"])
    assert _built(cfg) == (pytest.approx(math.log(1 / 0.07)), -3.0)  # the model has a bias: the model's


@pytest.mark.parametrize("overrides, ignored", [
    (["objective.init_logit_scale=1.0"], "objective.init_logit_scale"),
    (["objective=siglip", "model.init_logit_scale=1.0"], "model.init_logit_scale"),
    (["objective=siglip", "model.init_logit_bias=-3", "objective.init_logit_bias=-7"], "objective.init_logit_bias"),
])
def test_setting_the_ignored_side_is_refused(overrides, ignored):
    with pytest.raises((ConfigError, ValueError), match=f"{ignored}=.*has no effect"):
        parse(_base(), overrides)
