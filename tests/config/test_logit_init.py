"""The initial temperature/bias has one source, ModelConfig: the built model holds what the user set.

``objective=siglip`` gives a model left at its defaults SigLIP's init; an objective that needs a bias
with a model that has none is refused; the removed ``objective.init_logit_*`` keys name their
replacement; configs saved before the move still rebuild the model they trained.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from clipl.config import ConfigError, parse, to_container
from clipl.config.io import from_container
from clipl.config.schema import RunConfig
from clipl.models import preset
from clipl.module import CLIPModule
from clipl.objectives import SigLipLossConfig
from clipl.run import resolve

LN10 = math.log(10.0)
CLIP_INIT = math.log(1 / 0.07)


def _base() -> RunConfig:
    return RunConfig(model=preset("tiny_vit"))


def _built(cfg: RunConfig) -> tuple[float, float | None]:
    """The built model's logit_scale and logit_bias (None: no bias parameter)."""
    module = CLIPModule(cfg)
    module.configure_model()
    bias = module.model.logit_bias
    return module.model.logit_scale.item(), None if bias is None else bias.item()


@pytest.mark.parametrize("overrides, expected", [
    ([], (CLIP_INIT, None)),
    (["model.init_logit_scale=2.0"], (2.0, None)),
    (["model.init_logit_scale=2.0", "model.init_logit_bias=-3"], (2.0, -3.0)),  # clip keeps a set bias
    (["objective=siglip"], (LN10, -10.0)),  # SigLIP's init on a default model
    (["objective=siglip", "model.init_logit_bias=-5"], (CLIP_INIT, -5.0)),  # the user's bias, either order
    (["model.init_logit_bias=-5", "objective=siglip"], (CLIP_INIT, -5.0)),
    (["objective=siglip", "model.init_logit_scale=1.5", "model.init_logit_bias=-4"], (1.5, -4.0)),
    (["model=tiny_rn", "objective=siglip", "model=tiny_vit"], (LN10, -10.0)),  # applied to the final model
    (["objective=siglip", "objective=clip"], (CLIP_INIT, None)),  # the final objective decides
])
def test_the_built_model_holds_what_the_user_set(overrides, expected):
    cfg = parse(_base(), overrides)
    scale, bias = _built(cfg)
    assert scale == pytest.approx(expected[0], abs=1e-6)
    assert bias == (None if expected[1] is None else pytest.approx(expected[1]))
    assert (cfg.model.init_logit_scale, cfg.model.init_logit_bias) == pytest.approx(expected)


def test_a_recipe_that_chose_its_temperature_keeps_it():
    """objective=siglip never overwrites a model the recipe configured: it is refused instead."""
    recipe = RunConfig(model=dataclasses.replace(preset("tiny_vit"), init_logit_scale=3.0))
    with pytest.raises(ConfigError, match=r"'siglip' needs a logit bias.*model\.init_logit_bias=-10 "
                                          r"model\.init_logit_scale=2\.3026"):
        parse(recipe, ["objective=siglip"])
    cfg = parse(recipe, ["objective=siglip", "model.init_logit_bias=-10"])
    assert _built(cfg) == (pytest.approx(3.0), pytest.approx(-10.0))


@pytest.mark.parametrize("overrides", [["objective=siglip", "model.init_logit_scale=1.0"],
                                       ["objective=siglip", "model.init_logit_bias=null"]])
def test_an_objective_needing_a_bias_with_a_model_without_one_is_refused(overrides):
    with pytest.raises(ConfigError, match=r"objective 'siglip' needs a logit bias.*model\.init_logit_bias=-10"):
        parse(_base(), overrides)


def test_a_recipe_building_siglip_without_a_model_bias_is_refused():
    with pytest.raises(ValueError, match=r"needs a logit bias.*model\.init_logit_bias=-10"):
        RunConfig(model=preset("tiny_vit"), objective=SigLipLossConfig())
    model = dataclasses.replace(preset("tiny_vit"), init_logit_scale=LN10, init_logit_bias=-10.0)
    assert _built(RunConfig(model=model, objective=SigLipLossConfig())) == (pytest.approx(LN10), -10.0)


@pytest.mark.parametrize("name", ["init_logit_scale", "init_logit_bias"])
def test_the_removed_objective_keys_name_the_model_field(name, tmp_path):
    with pytest.raises(ConfigError, match=rf"objective\.{name} was removed.*set model\.{name}"):
        parse(_base(), ["objective=siglip", f"objective.{name}=-4"])
    old = tmp_path / "old.py"
    for body in (f"RunConfig(model=preset('tiny_vit'), objective=SigLipLossConfig({name}=-4))",
                 f"RunConfig(model=preset('tiny_vit'))\n    cfg.objective.{name} = -4\n    return cfg"):
        first = "cfg = " if "return cfg" in body else "return "
        old.write_text("from clipl.config.schema import RunConfig\nfrom clipl.models import preset\n"
                       "from clipl.objectives import SigLipLossConfig\n\n\n"
                       f"def config():\n    {first}{body}\n")
        with pytest.raises(ConfigError, match=rf"objective\.{name} was removed.*model\.{name}"):
            resolve(old, ["data=shapes"])


@pytest.mark.parametrize("objective, model_bias, built", [
    # Before the move the model took the objective's pair when the objective had a bias and the model none.
    ({"name": "siglip", "init_logit_scale": 1.5, "init_logit_bias": -7.0}, None, (1.5, -7.0)),
    ({"name": "siglip", "init_logit_scale": 1.5, "init_logit_bias": -7.0}, -3.0, (CLIP_INIT, -3.0)),
    ({"name": "clip", "init_logit_scale": 1.5, "init_logit_bias": None}, None, (CLIP_INIT, None)),
])
def test_a_config_saved_before_the_move_rebuilds_its_model(objective, model_bias, built):
    data = to_container(_base())
    data["model"]["init_logit_bias"] = model_bias
    data["objective"] = {**data["objective"], **objective}
    if objective["name"] == "siglip":
        data["objective"].pop("max_logit_scale")
    cfg = from_container(RunConfig, data)
    assert "init_logit_scale" not in to_container(cfg)["objective"]
    assert _built(cfg) == (pytest.approx(built[0]), None if built[1] is None else pytest.approx(built[1]))


def test_a_recipe_file_building_siglip_without_a_model_bias_exits_2(tmp_path):
    recipe = tmp_path / "siglip.py"
    recipe.write_text("from clipl.config.schema import RunConfig\nfrom clipl.models import preset\n"
                      "from clipl.objectives import SigLipLossConfig\n\n\n"
                      "def config():\n    return RunConfig(model=preset('tiny_vit'), objective=SigLipLossConfig())\n")
    with pytest.raises(ConfigError, match=rf"recipe {recipe}: objective 'siglip' needs a logit bias") as err:
        resolve(recipe, ["data=shapes"])
    assert len(str(err.value).splitlines()) == 1
