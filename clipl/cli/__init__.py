"""clipl's command-line interface: the ``clipl`` and ``lightning`` console scripts, all in this package.

The library packages hold no argument parsing: each command here reads its arguments and calls the
library (clipl.run, clipl.eval, clipl.data, clipl.distributed.convert, clipl.models.export).

- commands.py: ``clipl COMMAND ...``, the usage text, the table of commands and the exit code 2 on
  a configuration error;
- run.py: ``run``, ``config``, ``recipes``, ``cp`` (the commands that take a recipe);
- lightning.py: the ``lightning`` script (``lightning run RECIPE``), sharing the name with other CLIs;
- data.py, eval.py, convert.py, export.py: ``clipl data|eval|convert|export``.
"""

from clipl.cli.commands import main
from clipl.cli.lightning import lightning_main

__all__ = ["lightning_main", "main"]
