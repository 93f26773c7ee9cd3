"""``clipl COMMAND ...``: the table of commands and the dispatcher (the usage text is clipl.cli.usage)."""

from __future__ import annotations

import sys

from clipl.cli.lightning import lightning_on_path
from clipl.cli.run import cmd_config, cmd_cp, cmd_recipes, cmd_run
from clipl.cli.usage import USAGE, guarded


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
    "data": _delegate("clipl.cli.data"),
    "eval": _delegate("clipl.cli.eval"),
    "convert": _delegate("clipl.cli.convert"),
    "export": _delegate("clipl.cli.export"),
}


def main(argv: list[str] | None = None) -> int:
    """``clipl COMMAND ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        out = sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout
        print(USAGE, file=out)
        note = lightning_on_path()
        if note:
            print(f"\nnote: {note}", file=out)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return guarded(COMMANDS[argv[0]], argv[1:])
