"""Typed run configuration: schema, CLI overrides, YAML round trip.

Where a config lives (THE RULE): every section config is a dataclass in a leaf module named
``config.py`` inside the package that owns the section -- clipl.models.config (model),
clipl.data.config (data), clipl.eval.config (eval), clipl.training.config (the run loop's own
sections: trainer with trainer.deepspeed, logging, checkpoint, loop); an objective may keep its config
class beside its loss where that module is a leaf for config purposes. A config module imports only
the standard library, typing helpers and other config leaves (clipl.registry's checks included) --
never the code that consumes it -- so the consumers import their config downward and nothing imports
upward to reach one. Each field has a docstring and its default; enum-like strings are ``Literal[...]``
(or registry names) checked in ``__post_init__``, naming the field, the bad value and the choices.

This package only composes (schema.py: RunConfig from the section leaves), reads and writes (io.py),
parses overrides (parse.py), validates across sections and against the machine (validate.py) and
documents (reference.py, docs/config.md). It sits above the section leaves and the domain packages
it composes (they never import it: clipl.codec, a leaf, is the dataclass <-> dict codec they share)
and below the training code, clipl.run and the CLI, which read the composed RunConfig (CLIPModule
rebuilds it from a checkpoint's hyper_parameters); it never imports them (tests/test_architecture.py).
"""

from clipl.config.io import from_container, load_config, save_config, to_container
from clipl.config.parse import ConfigError, parse

__all__ = ["ConfigError", "from_container", "load_config", "parse", "save_config", "to_container"]
