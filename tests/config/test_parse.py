"""Recipe configs + key=value overrides: strict keys, typed values, shortcuts, YAML round trip."""

import dataclasses

import pytest
import torch

from clipl.config import ConfigError, load_config, parse, save_config, to_container
from clipl.config.schema import RunConfig
from clipl.models import build_model, preset
from clipl.run import resolve, shipped_recipes

RECIPES = sorted(shipped_recipes())


def base() -> RunConfig:
    return RunConfig(model=preset("tiny_vit"))


# What recipes leave for the command line besides data.train (resolving does not open the file).
REQUIRED_BY_RECIPE = {"vit_l14_336": ["model.init_from=runs/vit_l14/checkpoints/last.ckpt"]}


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_parses_and_builds_its_model(name):
    _, cfg = resolve(name, ["data=shapes", *REQUIRED_BY_RECIPE.get(name, [])])
    assert isinstance(cfg, RunConfig)
    with torch.device("meta"):  # shapes only: the big presets build in milliseconds
        model = build_model(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert n > 1e6


def test_paper_recipe_hyperparameters():
    _, cfg = resolve("rn50x4", ["data=shapes"])
    assert cfg.trainer.global_batch_size == 32768
    assert cfg.trainer.max_epochs == 32
    assert cfg.optim.lr == 5e-4 and cfg.optim.weight_decay == 0.2 and cfg.optim.warmup_steps == 2000
    assert cfg.optim.betas == [0.9, 0.999] and cfg.optim.eps == 1e-8  # ResNet Adam settings
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy == "deepspeed"
    _, vit = resolve("vit_l14", ["data=shapes"])
    assert vit.optim.lr == 4e-4 and vit.optim.betas == [0.9, 0.98] and vit.optim.eps == 1e-6
    _, big = resolve("rn50x64", ["data=shapes"])
    assert big.optim.lr == 3.6e-4 and big.model.image.image_size == 448 and big.optim.eps == 1e-8


def test_vit_l14_336_recipe_continues_a_vit_l14_checkpoint():
    from clipl.models.metadata import describe_differences, without_training_fields

    with pytest.raises(ConfigError, match=r"model\.init_from"):  # the checkpoint is required
        resolve("vit_l14_336", ["data=shapes"])
    _, cfg = resolve("vit_l14_336", ["data=shapes", "model.init_from=runs/vit_l14/checkpoints/last.ckpt"])
    assert cfg.optim.lr == 2e-5 and cfg.trainer.max_epochs == 1 and cfg.trainer.global_batch_size == 32768
    assert cfg.model.init_from == "runs/vit_l14/checkpoints/last.ckpt"
    # The same model as the vit_l14 recipe's but for the input size, so its checkpoints load strictly.
    _, l14 = resolve("vit_l14", ["data=shapes"])
    diff = describe_differences(without_training_fields(l14.model), without_training_fields(cfg.model))
    assert diff == ["image.image_size: 224 != 336"]


def test_overrides_set_typed_values():
    cfg = parse(base(), ["trainer.max_steps=7", "optim.lr=1e-3", "logging.tags=[a,b]", "data.val=null"])
    assert cfg.trainer.max_steps == 7 and cfg.optim.lr == 1e-3 and cfg.logging.tags == ["a", "b"]


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"trainer\.max_stepz.*Did you mean 'trainer\.max_steps'"):
        parse(base(), ["trainer.max_stepz=3"])


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"trainer\.max_steps.*wrong type"):
        parse(base(), ["trainer.max_steps=many"])


def test_invalid_combination_names_field():
    with pytest.raises(ConfigError, match="trainer.strategy=deepspeed"):
        parse(base(), ["trainer.strategy=deepspeed", "trainer.accelerator=cpu"])


def test_missing_data_path_suggests_shapes():
    with pytest.raises(ConfigError, match=r"data\.train.*data=shapes"):
        resolve("rn50", [])


def test_tower_preset_shortcut_replaces_one_tower():
    cfg = parse(base(), ["model.image=vit_b16"])
    assert cfg.model.image == preset("vit_b16").image
    assert cfg.model.text == preset("tiny_vit").text
    with pytest.raises(ConfigError, match="vit_b16"):
        parse(base(), ["model.image=vit_b61"])


def test_model_objective_and_data_shortcuts():
    cfg = parse(base(), ["model=rn50", "objective=siglip", "data=shapes", "model.init_logit_bias=-5"])
    assert cfg.model == dataclasses.replace(preset("rn50"), init_logit_bias=-5)
    assert cfg.objective.name == "siglip" and cfg.objective.max_logit_scale is None
    assert cfg.data.train == "shapes"


def test_yaml_round_trip(tmp_path):
    cfg = parse(base(), ["objective=siglip", "model.image=rn50", "trainer.max_steps=3"])
    save_config(cfg, tmp_path / "config.yaml")
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg and type(back.model.image) is type(cfg.model.image)
    assert to_container(back) == to_container(cfg)


@pytest.mark.parametrize(
    "key, replacement",
    [("data.batch_size", "trainer.micro_batch_size"), ("trainer.accumulate_grad_batches", "trainer.global_batch_size"),
     ("logging.every_n_steps", "trainer.log_every_n_steps")],
)
def test_removed_batch_fields_name_their_replacement(key, replacement, tmp_path):
    with pytest.raises(ConfigError, match=rf"{key} was removed.*{replacement}"):
        parse(base(), [f"{key}=4"])
    # An old recipe: the field passed to the section's constructor, or assigned on the section.
    section, name = key.split(".")
    cls = {"data": "DataConfig", "trainer": "TrainerConfig", "logging": "LoggingConfig"}[section]
    module = "clipl.data.config" if section == "data" else "clipl.training.config"
    old = tmp_path / "old.py"
    for body in (f"RunConfig(model=preset('tiny_vit'), {section}={cls}({name}=4))",
                 f"RunConfig(model=preset('tiny_vit'))\n    cfg.{section}.{name} = 4\n    return cfg"):
        first = "cfg = " if "return cfg" in body else "return "
        old.write_text(f"from clipl.config.schema import RunConfig\nfrom clipl.models import preset\n"
                       f"from {module} import {cls}\n\n\ndef config():\n    {first}{body}\n")
        with pytest.raises(ConfigError, match=rf"{key} was removed.*{replacement}"):
            resolve(old, ["data=shapes"])


@pytest.mark.parametrize("override, message", [
    ("model.image.arch=vit_nope", r"model.image.arch='vit_nope' is not a known tower architecture. Did you mean 'vit'"),
    ("model.image.arch=modified_resnet", r"model.image.arch=modified_resnet: the image tower's other fields are a "
                                         r"ViTConfig, not a ModifiedResNetConfig; .*model.image=PRESET"),
    ("model.text.arch=hf_text", r"model.text.arch=hf_text: the text tower's other fields are a TextTransformerConfig"),
])
def test_a_tower_arch_that_its_fields_do_not_match_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        parse(base(), [override])
    # A recipe that sets it in Python gets the same line.
    bad = base()
    side, arch = override.split(".")[1], override.split("=")[1]
    setattr(getattr(bad.model, side), "arch", arch)
    with pytest.raises(ConfigError, match=message):
        parse(bad, [])


def test_switching_a_tower_by_preset_still_works():
    cfg = parse(base(), ["model.image=tiny_rn"])
    assert cfg.model.image.arch == "modified_resnet" and type(cfg.model.image).__name__ == "ModifiedResNetConfig"
