"""Typed run configuration: schema, CLI overrides, YAML round trip."""

from clipl.config.io import from_container, load_config, save_config, to_container
from clipl.config.parse import ConfigError, parse

__all__ = ["ConfigError", "from_container", "load_config", "parse", "save_config", "to_container"]
