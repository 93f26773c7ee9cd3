"""Console scripts: ``clipl`` and ``lightning``.

    lightning run RECIPE.py [--accelerator A] [--devices N] [--num-nodes M] [--node-rank R]
                            [--main-address H] [--main-port P] [--strategy S] [--precision P]
                            [key=value ...]
    clipl run ...            (the same)
    clipl config RECIPE.py [--devices N] [--num-nodes M] [...] [key=value ...]
                                               print the resolved config and its batch plan
    clipl recipes                              list the shipped recipes
    clipl cp RECIPE NEW.py                     copy a recipe to start your own
    clipl data inspect|pack|example|shapes ... data tools (pack: your images + captions -> shards)
    clipl eval CHECKPOINT ...                  evaluation of a checkpoint
    clipl convert ZERO_DIR OUT ...             DeepSpeed ZeRO checkpoint -> one fp32 checkpoint
    clipl export SOURCE OUT --format F         weights -> openai file, open_clip or HF folder

A bad configuration exits with code 2 and a one-paragraph message, never a traceback.
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

    from clipl.config.parse import missing_problems, parse, structured
    from clipl.run import checked, load_recipe, recipe_config, resolve_batch_plan

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
    cfg = checked(parse(base, overrides))
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


def _delegate(module: str) -> callable:
    def call(argv: list[str]) -> int:
        import importlib

        return int(importlib.import_module(module).main(argv) or 0)

    return call


COMMANDS = {
    "run": cmd_run,
    "config": cmd_config,
    "recipes": cmd_recipes,
    "cp": cmd_cp,
    "data": _delegate("clipl.data.cli"),
    "eval": _delegate("clipl.eval.cli"),
    "convert": _delegate("clipl.distributed.convert"),
    "export": _delegate("clipl.models.export"),
}


def _guarded(fn, argv: list[str]) -> int:
    try:
        return fn(argv)
    except ConfigError as e:
        for problem in getattr(e, "problems", None) or [str(e)]:
            print(f"error: {problem}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        out = sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout
        print(__doc__.strip(), file=out)
        note = lightning_on_path()
        if note:
            print(f"\nnote: {note}", file=out)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return _guarded(COMMANDS[argv[0]], argv[1:])


OUR_SCRIPT = "clipl.cli:lightning_main"


def other_lightning_commands() -> list:
    """Console-script entry points named ``lightning`` that other installed packages declare
    (lightning-sdk's CLI; Lightning 2.5+ itself installs only ``fabric``)."""
    from importlib.metadata import entry_points

    return [ep for ep in entry_points(group="console_scripts", name="lightning") if ep.value != OUR_SCRIPT]


def lightning_on_path() -> str | None:
    """What ``lightning`` on PATH is when it is not clipl's script: a note saying what to do, else None."""
    path = shutil.which("lightning")
    if path is None:
        return "no `lightning` command on PATH: use `clipl run RECIPE` (the same command)"
    try:
        text = Path(path).read_text(errors="replace")[:4000]
    except OSError:
        return None
    if OUR_SCRIPT.split(":")[0] in text and "lightning_main" in text:
        return None
    return (f"`lightning` on PATH ({path}) is another package's (lightning-sdk installed after clipl?): "
            "use `clipl run RECIPE`, the same command, or `pip install --force-reinstall --no-deps clipl` "
            "to get clipl's `lightning` back (it forwards every non-clipl command to the other CLI)")


def _is_recipe(arg: str) -> bool:
    from clipl.run import shipped_recipes

    return arg.endswith(".py") or arg in shipped_recipes()


def lightning_main(argv: list[str] | None = None) -> int:
    """``lightning run RECIPE ...`` (``lightning run model RECIPE`` is accepted too).

    The ``lightning`` name is shared: lightning-sdk installs a ``lightning`` CLI too. clipl's script
    takes clipl's commands (``run`` with a recipe, ``--help``) and hands everything else to the other
    package's ``lightning`` entry point when one is installed, so neither loses its commands.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[1:]
    if rest[:1] == ["model"] and len(rest) > 1:
        rest = rest[1:]
    ours = argv[:1] == ["run"] and (not rest or rest[0].startswith("-") or _is_recipe(rest[0]))
    others = other_lightning_commands()
    if not ours and others and argv[:1] not in (["-h"], ["--help"], []):
        sys.argv = ["lightning", *argv]
        return int(others[0].load()() or 0)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{__doc__.strip()}\n\n`lightning` is clipl's command here; `clipl` takes the same arguments.")
        if others:
            print(f"Other commands go to {others[0].value} ({others[0].dist.name if others[0].dist else '?'}).")
        return 0
    if argv[:1] != ["run"]:
        print("usage: lightning run RECIPE.py [flags] [key=value ...]  (see `lightning --help`)", file=sys.stderr)
        return 2
    return _guarded(lambda a: cmd_run(a, prog="lightning run"), rest)


if __name__ == "__main__":
    sys.exit(main())
