"""The run loop's config sections (clipl.training.config): enum-like fields are Literals (or registry
names) checked in __post_init__, naming the field, the bad value, every choice and the close matches; on
the command line a bad value exits 2 with one line, from a recipe as well."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from clipl import cli
from clipl.config import load_config, parse, save_config
from clipl.training.config import CheckpointConfig, LoggingConfig, LoopConfig, TrainerConfig

REPO = Path(__file__).resolve().parents[2]

# (section, field, a near miss, the choice it is near, every choice)
ENUMS = [
    ("trainer", "accelerator", "gpus", "gpu", ["auto", "cpu", "gpu", "cuda"]),
    ("trainer", "strategy", "ddpp", "ddp", ["auto", "ddp", "deepspeed"]),
    ("trainer", "precision", "bf16-mix", "bf16-mixed", ["32-true", "bf16-mixed", "16-mixed", "bf16-true"]),
    ("trainer", "process_group_backend", "ncl", "nccl", ["nccl", "gloo", "mpi", None]),
    ("logging", "backend", "tensorbord", "tensorboard", ["wandb", "csv", "tensorboard", "none"]),
    ("checkpoint", "monitor_mode", "maxi", "max", ["max", "min"]),
]
CLASSES = {"trainer": TrainerConfig, "logging": LoggingConfig, "checkpoint": CheckpointConfig, "loop": LoopConfig}


def _one_of(section: str, field: str, bad: str, near: str, choices: list[str]) -> str:
    listed = ", ".join(repr(c) for c in choices)  # an Optional[Literal] lists None too
    return f"{section}.{field}='{bad}' is not one of {listed}. Did you mean '{near}'"


@pytest.mark.parametrize("section, field, bad, near, choices", ENUMS)
def test_post_init_names_field_value_choices_and_close_match(section, field, bad, near, choices):
    with pytest.raises(ValueError) as e:
        CLASSES[section](**{field: bad})
    assert str(e.value).startswith(_one_of(section, field, bad, near, choices))
    for choice in choices:
        if not (field == "precision" and choice == "16-mixed") and not (field == "strategy" and choice == "deepspeed"):
            assert getattr(CLASSES[section](**{field: choice}), field) == choice  # CPU-only combinations aside


@pytest.mark.parametrize("section, field, bad, near, choices", ENUMS)
def test_bad_enum_on_the_command_line_exits_2_with_one_line(section, field, bad, near, choices, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["config", "quickstart", f"{section}.{field}={bad}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + _one_of(section, field, bad, near, choices)), lines


def test_zero_stage_is_one_of_three_integers(capsys, monkeypatch):
    with pytest.raises(ValueError, match=r"^trainer\.zero_stage=4 is not one of 1, 2, 3\.$"):
        TrainerConfig(zero_stage=4)
    monkeypatch.chdir(REPO)
    assert cli.main(["config", "quickstart", "trainer.zero_stage=0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: trainer.zero_stage='0' is not one of 1, 2, 3."]
    assert parse(TrainerConfig(), ["zero_stage=3"]).zero_stage == 3


@pytest.mark.parametrize("override, message", [
    ("checkpoint.every_n_steps=0", "checkpoint.every_n_steps must be >= 1, got 0"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be -1 (keep all) or >= 1, got 0"),
    ("checkpoint.keep_last=-2", "checkpoint.keep_last must be -1 (keep all) or >= 1, got -2"),
    ("checkpoint.every_minutes=0", "checkpoint.every_minutes must be None or > 0, got 0.0"),
    ("checkpoint.top_k=0", "checkpoint.top_k must be -1 (keep all) or >= 1, got 0"),
    ("checkpoint.resume=' '", "checkpoint.resume must be 'auto', 'never' or a checkpoint path, got ' '"),
    ("loop.max_nonfinite_steps=0", "loop.max_nonfinite_steps must be >= 1, got 0"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1, got 0"),
])
def test_bad_numbers_exit_2_naming_the_field(override, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["config", "quickstart", override]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_bad_value_in_a_recipe_exits_2_with_one_line(tmp_path, capsys):
    recipe = tmp_path / "bad.py"
    recipe.write_text("from clipl.config.schema import RunConfig\nfrom clipl.models import preset\n"
                      "from clipl.training.config import LoggingConfig\n\n\ndef config():\n"
                      "    return RunConfig(model=preset('tiny_vit'), logging=LoggingConfig(backend='wandbb'))\n")
    assert cli.main(["config", str(recipe), "data=shapes"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: recipe {recipe}: " + _one_of("logging", "backend", "wandbb", "wandb",
                                               ["wandb", "csv", "tensorboard", "none"]) + "?"]


def test_literal_fields_round_trip_through_yaml(tmp_path):
    from clipl.run import load_recipe

    assert typing.get_args(typing.get_type_hints(LoggingConfig)["backend"]) == ("wandb", "csv", "tensorboard", "none")
    cfg = parse(load_recipe("quickstart").config(), ["logging.backend=tensorboard", "checkpoint.monitor_mode=min",
                                                     "trainer.accelerator=cpu", "trainer.process_group_backend=gloo"])
    back = load_config(save_config(cfg, tmp_path / "config.yaml"))
    assert back == cfg and back.logging.backend == "tensorboard" and back.trainer.process_group_backend == "gloo"


def test_resume_keyword_typo_is_pointed_at(tmp_path):
    from clipl.config.validate import check_checkpoint

    assert check_checkpoint("nevr", "checkpoint.resume") == [
        "checkpoint.resume=nevr: no such file or folder (or did you mean 'never'?)"]
    assert check_checkpoint("auto", "checkpoint.resume") == check_checkpoint("never", "checkpoint.resume") == []
    assert check_checkpoint(str(tmp_path), "checkpoint.resume") == []


def test_the_leaf_imports_only_the_standard_library_and_clipl_registry():
    """clipl.config's rule: clipl.distributed and clipl.config.schema import this module, so it must not
    import what consumes it (the trainer, Lightning, clipl.distributed): that would be a circle again."""
    import ast
    import sys

    import clipl.training as package
    from clipl.training import config as leaf

    imported = set()
    for path in (leaf.__file__, package.__file__):  # importing the leaf runs the package's __init__ first
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
    assert {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names} == {"clipl.registry"}
