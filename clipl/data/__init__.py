"""Data: WebDataset / table / built-in shapes sources, transforms, and the CLIPDataModule.

Submodules are imported lazily so `clipl.data.transforms` stays cheap (no Lightning import).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "clipl.data.config",
    "ShapesConfig": "clipl.data.config",
    "CLIPDataModule": "clipl.data.datamodule",
    "ensure_shapes": "clipl.data.shapes",
    "ShapesDataset": "clipl.data.shapes",
    "inspect_source": "clipl.data.inspect",
    "normalize": "clipl.data.transforms",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipl.data' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
