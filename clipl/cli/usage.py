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

import sys

from clipl.config.parse import ConfigError

USAGE = __doc__.strip()


def guarded(fn, argv: list[str]) -> int:
    """``fn(argv)``, with a configuration error printed as one ``error:`` line per problem and exit code 2."""
    try:
        return fn(argv)
    except ConfigError as e:
        for problem in getattr(e, "problems", None) or [str(e)]:
            print(f"error: {problem}", file=sys.stderr)
        return 2
