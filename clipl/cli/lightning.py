"""The ``lightning`` console script: ``lightning run RECIPE`` is ``clipl run RECIPE``.

The ``lightning`` name is shared: lightning-sdk installs a ``lightning`` CLI too. clipl's script takes
clipl's commands and hands everything else to the other package's entry point when one is installed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from clipl.cli.usage import USAGE, guarded
from clipl.cli.run import cmd_run

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
        print(f"{USAGE}\n\n`lightning` is clipl's command here; `clipl` takes the same arguments.")
        if others:
            print(f"Other commands go to {others[0].value} ({others[0].dist.name if others[0].dist else '?'}).")
        return 0
    if argv[:1] != ["run"]:
        print("usage: lightning run RECIPE.py [flags] [key=value ...]  (see `lightning --help`)", file=sys.stderr)
        return 2
    return guarded(lambda a: cmd_run(a, prog="lightning run"), rest)
