"""Enum-like and bounded fields of the model, objective, data, eval and optim sections are checked when
the config is made: a bad value on the command line is one line naming the field, the value and the
choices (exit 2), and the same value in a recipe's Python fails in the dataclass's ``__post_init__``."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from clipl import cli
from clipl.config import ConfigError, parse
from clipl.config.schema import RunConfig
from clipl.data.config import DataConfig, ShapesConfig
from clipl.eval.config import EvalConfig
from clipl.models import preset
from clipl.models.backbones.hf_text import HFTextConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.timm_image import TimmImageConfig
from clipl.models.backbones.vit import ViTConfig
from clipl.models.layers import ACTIVATIONS
from clipl.objectives import ClipLossConfig, SigLipLossConfig
from clipl.optim import SCHEDULES, OptimConfig


def _base() -> RunConfig:
    return RunConfig(model=preset("tiny_vit"))


def _hf_text() -> RunConfig:  # a config only: building it would need transformers
    return RunConfig(model=dataclasses.replace(preset("tiny_vit"), text=HFTextConfig()))


def _timm_image() -> RunConfig:
    return RunConfig(model=dataclasses.replace(preset("tiny_vit"), image=TimmImageConfig()))


# (section, base config, override, the one-line message, the dataclass and keyword that fail alike in Python)
CASES = [
    ("model", _base, "model.image.act=relu", r"model\.image\.act='relu' is not a known activation\. Did you mean "
     r"'gelu'", ViTConfig, {"act": "relu"}),
    ("model", _base, "model.text.act=gelu2", r"model\.text\.act='gelu2' is not a known activation",
     TextTransformerConfig, {"act": "gelu2"}),
    ("model", _hf_text, "model.text.pooler=ect", r"model\.text\.pooler='ect' is not one of 'cls', 'mean', 'eot'\. "
     r"Did you mean 'eot'", HFTextConfig, {"pooler": "ect"}),
    ("model", _hf_text, "model.text.proj=mpl", r"model\.text\.proj='mpl' is not one of 'linear', 'mlp', 'none'",
     HFTextConfig, {"proj": "mpl"}),
    ("model", _timm_image, "model.image.proj=lineer", r"model\.image\.proj='lineer' is not one of 'linear', 'mlp', "
     r"'none'\. Did you mean 'linear'", TimmImageConfig, {"proj": "lineer"}),
    ("objective", _base, "objective.max_logit_scale=0", r"objective\.max_logit_scale must be > 0 or null, got 0",
     ClipLossConfig, {"max_logit_scale": 0.0}),
    ("objective", _base, "objective.name=siglip", r"objective\.name='siglip' does not name this ClipLossConfig "
     r"\('clip'\); switch objectives with objective=NAME \(one of clip, siglip", ClipLossConfig, {"name": "siglip"}),
    ("data", _base, "data.table_rows_per_shard=0", r"data\.table_rows_per_shard must be >= 1, got 0",
     DataConfig, {"table_rows_per_shard": 0}),
    ("data", _base, "data.max_skip_rate=1.5", r"data\.max_skip_rate must be in \[0, 1\], got 1\.5",
     DataConfig, {"max_skip_rate": 1.5}),
    ("data", _base, "data.shapes.caption_colour_prob=2", r"data\.shapes\.caption_colour_prob must be in \[0, 1\]",
     ShapesConfig, {"caption_colour_prob": 2.0}),
    ("eval", _base, "eval.linear_probe_position=befor", r"eval\.linear_probe_position='befor' is not one of "
     r"'after', 'before'\. Did you mean 'before'", EvalConfig, {"linear_probe_position": "befor"}),
    ("eval", _base, "eval.linear_probe_train_fraction=1", r"eval\.linear_probe_train_fraction must lie in \(0, 1\)",
     EvalConfig, {"linear_probe_train_fraction": 1.0}),
    ("optim", _base, "optim.schedule=cosin", r"optim\.schedule 'cosin'\. Did you mean 'cosine'", OptimConfig,
     {"schedule": "cosin"}),
    ("optim", _base, "optim.betas=[0.9]", r"optim\.betas must be two numbers in \[0, 1\)", OptimConfig,
     {"betas": [0.9]}),
    ("optim", _base, "optim.min_lr_ratio=-0.1", r"optim\.min_lr_ratio must be in \[0, 1\]", OptimConfig,
     {"min_lr_ratio": -0.1}),
    ("optim", _base, "optim.lock_image_unlocked_groups=2", r"optim\.lock_image_unlocked_groups=2 has no effect "
     r"without optim\.lock_image=true", OptimConfig, {"lock_image_unlocked_groups": 2}),
]
IDS = [f"{c[0]}-{c[2].split('=')[0]}" for c in CASES]


@pytest.mark.parametrize("section, base, override, message, cls, kwargs", CASES, ids=IDS)
def test_a_bad_value_is_refused_in_one_line_naming_the_field(section, base, override, message, cls, kwargs):
    with pytest.raises(ConfigError, match=message) as err:
        parse(base(), [override])
    assert len(str(err.value).splitlines()) == 1 and override.split("=")[0].split(".")[-1] in str(err.value)
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_the_good_values_pass():
    cfg = parse(_hf_text(), ["model.text.pooler=mean", "model.text.proj=mlp", "model.image.act=gelu",
                             "eval.linear_probe_position=before", "optim.schedule=linear", "optim.lock_image=true",
                             "optim.lock_image_unlocked_groups=2", "objective.max_logit_scale=null"])
    assert (cfg.model.text.pooler, cfg.model.text.proj, cfg.model.image.act) == ("mean", "mlp", "gelu")
    assert cfg.eval.linear_probe_position == "before" and cfg.optim.lock_image_unlocked_groups == 2


@pytest.mark.parametrize("cls, field, choices", [
    (EvalConfig, "linear_probe_position", ("after", "before")),
    (HFTextConfig, "pooler", ("cls", "mean", "eot")),
    (HFTextConfig, "proj", ("linear", "mlp", "none")),
    (TimmImageConfig, "proj", ("linear", "mlp", "none")),
])
def test_fixed_choices_are_literal_annotations(cls, field, choices):
    """Fixed choice sets are Literals (OmegaConf checks the command line against them); choices a recipe
    may extend come from registries, whose names are the only ones accepted."""
    assert typing.get_args(typing.get_type_hints(cls)[field]) == choices


@pytest.mark.parametrize("cls, field, registry", [(ViTConfig, "act", ACTIVATIONS), (TextTransformerConfig, "act",
                                                                                     ACTIVATIONS),
                                                  (OptimConfig, "schedule", SCHEDULES)])
def test_registry_backed_fields_take_every_registered_name(cls, field, registry):
    for name in registry.names():
        assert getattr(cls(**{field: name}), field) == name


def test_siglip_config_validates_like_its_base():
    with pytest.raises(ValueError, match="max_logit_scale"):
        SigLipLossConfig(max_logit_scale=-1.0)


def test_a_bad_value_exits_2_with_one_line(capsys):
    rc = cli.main(["config", "quickstart", "eval.linear_probe_position=befor"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: eval.linear_probe_position='befor'")
