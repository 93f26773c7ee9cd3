"""Run configs as YAML files, and the RunConfig saved in a clipl checkpoint.

The dataclass <-> plain-container codec itself (with the discriminators that select a tower or an
objective class) is clipl.codec, a leaf shared with clipl.models; it is re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from clipl.codec import from_container, to_container

__all__ = ["from_container", "load_config", "run_config_from", "save_config", "to_container"]


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (resolved); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


def load_config(path: str | Path, cls: type | None = None) -> Any:
    """Read a YAML written by :func:`save_config` back into dataclasses (RunConfig by default)."""
    if cls is None:
        from clipl.config.schema import RunConfig

        cls = RunConfig
    data = OmegaConf.to_container(OmegaConf.load(Path(path)), resolve=True)
    return from_container(cls, data)


def run_config_from(saved: Optional[dict]) -> Any:
    """The RunConfig of a clipl checkpoint's saved plain config (clipl.models.sources.Source.saved_config),
    or None when there is none or it comes from an older or foreign run schema (its model section alone
    still describes the weights: Source.config)."""
    if saved is None:
        return None
    from clipl.config.schema import RunConfig

    try:
        return from_container(RunConfig, dict(saved))
    except Exception:  # noqa: BLE001 - any schema mismatch means "no usable RunConfig", as before
        return None
