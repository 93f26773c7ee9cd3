"""`clipl run`, `clipl config`, `clipl recipes`, `clipl cp`: the commands that take a recipe.

`lightning run` is `clipl run` (clipl.cli.lightning). The run's flags (--devices, --strategy ...) are
turned into the config overrides they stand for, so a recipe, its flags and ``key=value`` items meet in
one place: clipl.config.parse.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from clipl.config.parse import ConfigError

# `lightning run model` flags (Lightning < 2.5) -> the config field they set.
_FLAG_FIELDS = {
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "strategy": "trainer.strategy",
    "precision": "trainer.precision",
}
# Flags that describe the cluster rather than the run: Lightning reads them from the environment.
_FLAG_ENV = {"node_rank": "NODE_RANK", "main_address": "MASTER_ADDR", "main_port": "MASTER_PORT"}


def _run_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a CLIP model from a recipe.")
    p.add_argument("recipe", help="a recipe file (recipes/rn50x4.py) or a shipped recipe's name")
    p.add_argument("--accelerator", help="cpu, gpu, cuda, mps, auto")
    p.add_argument("--devices", help="devices per node: a number, a list such as 0,1, or auto")
    p.add_argument("--num-nodes", "--num_nodes", dest="num_nodes", help="number of nodes")
    p.add_argument("--node-rank", "--node_rank", dest="node_rank", help="rank of this node")
    p.add_argument("--main-address", "--main_address", dest="main_address", help="address of node 0")
    p.add_argument("--main-port", "--main_port", dest="main_port", help="port on node 0")
    p.add_argument("--strategy", help="auto, ddp, deepspeed")
    p.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed, bf16-true (or Lightning's 32, bf16, 16)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def _split_run_args(prog: str, argv: list[str]) -> tuple[str, list[str]]:
    args, extra = _run_parser(prog).parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        raise ConfigError(f"unknown option(s) {' '.join(unknown)}; config fields are set as key=value")
    overrides = [f"{field}={getattr(args, name)}" for name, field in _FLAG_FIELDS.items()
                 if getattr(args, name) is not None]
    for name, env in _FLAG_ENV.items():
        if getattr(args, name) is not None:
            os.environ[env] = str(getattr(args, name))
    return args.recipe, overrides + list(args.overrides) + extra


def cmd_run(argv: list[str], prog: str = "clipl run") -> int:
    from clipl.run import run

    recipe, overrides = _split_run_args(prog, argv)
    return run(recipe, overrides)


def cmd_config(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from clipl.config.parse import missing_problems, structured, to_config
    from clipl.run import load_recipe, recipe_config, resolve_batch_plan

    if not argv:
        raise ConfigError("usage: clipl config RECIPE.py [--devices N] [--num-nodes M] [key=value ...]")
    # The run's flags too: the plan depends on the world (devices x nodes) it would run on.
    recipe, overrides = _split_run_args("clipl config", argv)
    module = load_recipe(recipe)
    base = recipe_config(module, recipe)
    node = structured(base, overrides)
    missing = missing_problems(node)
    if missing:
        # A paper recipe leaves data.train for the launch on the cluster: show the config (``???``
        # where a value is due) and its plan, and say what a run would still need.
        print(OmegaConf.to_yaml(node), end="")
        print(f"# {resolve_batch_plan(OmegaConf.to_object(node.trainer)).describe()}")
        for problem in missing:
            print(f"warning: {problem}", file=sys.stderr)
        return 0
    cfg = to_config(node)  # the same node: the overrides are applied once
    plan = resolve_batch_plan(cfg.trainer)
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
    print(f"# {plan.describe()}")  # a YAML comment: the output stays a loadable config
    # The config may be meant for another machine, so what `run` would refuse here is only a warning.
    from clipl.config.validate import config_problems

    for problem in config_problems(cfg, own_data=callable(getattr(module, "datamodule", None))):
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def cmd_recipes(argv: list[str]) -> int:
    from clipl.run import load_recipe, shipped_recipes

    for name, path in sorted(shipped_recipes().items()):
        doc = (load_recipe(path).__doc__ or "").strip().splitlines()
        print(f"{name:14s} {doc[0] if doc else ''}")
    return 0


def cmd_cp(argv: list[str]) -> int:
    from clipl.run import recipe_path

    if len(argv) != 2:
        raise ConfigError("usage: clipl cp RECIPE NEW.py")
    src, dst = recipe_path(argv[0]), Path(argv[1])
    if dst.exists():
        raise ConfigError(f"{dst} exists; clipl cp never overwrites a file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    print(f"copied {src.name} to {dst}; run it with: lightning run {dst}")
    return 0
