"""The architecture that travels with exported weights: a ModelConfig as JSON.

Shapes cannot tell everything (the MLP activation, the number of attention heads), so every
clipl export records its full ModelConfig: in the safetensors header (key ``clipl_model_config``)
and, for torch files, in a JSON file beside the weights (``<weights file>.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from clipl.codec import from_container, to_container
from clipl.models.config import ModelConfig

METADATA_KEY = "clipl_model_config"
"""safetensors header / sidecar JSON key holding the ModelConfig."""


# Fields that change training, not the function the weights compute.
_TRAINING_ONLY = {"grad_checkpointing": False, "init_from": None, "init_from_strict": True}
_TOWER_TRAINING_ONLY = {"patch_dropout": 0.0}


def without_training_fields(cfg: ModelConfig, temperature: bool = False) -> ModelConfig:
    """``cfg`` with training-only fields (checkpointing, init_from, patch dropout) at their defaults;
    ``temperature`` also resets the initial logit scale (the trained value lives in the weights)."""
    def tower(t: Any) -> Any:
        if not dataclasses.is_dataclass(t):
            return t
        names = {f.name for f in dataclasses.fields(t)}
        return dataclasses.replace(t, **{k: v for k, v in _TOWER_TRAINING_ONLY.items() if k in names})

    changes = {k: v for k, v in _TRAINING_ONLY.items() if hasattr(cfg, k)}
    if temperature:
        changes["init_logit_scale"] = ModelConfig.init_logit_scale
    return dataclasses.replace(cfg, image=tower(cfg.image), text=tower(cfg.text), **changes)


def config_to_dict(cfg: ModelConfig) -> dict:
    """A ModelConfig as plain JSON-able data (towers carry their ``arch`` discriminator); training-only
    fields are left at their defaults, so an export describes the model, not how it was trained."""
    return to_container(without_training_fields(cfg))


def config_from_dict(data: dict, source: str = "metadata") -> ModelConfig:
    """The ModelConfig written by :func:`config_to_dict`; a clear error for foreign data."""
    try:
        return from_container(ModelConfig, dict(data))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: the recorded model config cannot be read by this clipl ({err})") from err


def config_to_json(cfg: ModelConfig) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def sidecar_path(weights: Path) -> Path:
    """The JSON file beside a torch weights file that records its architecture."""
    return weights.with_name(weights.name + ".json")


def write_sidecar(weights: Path, cfg: ModelConfig) -> Path:
    path = sidecar_path(weights)
    path.write_text(json.dumps({METADATA_KEY: config_to_dict(cfg), "weights": weights.name}, indent=1) + "\n")
    return path


def read_recorded_config(path: Path) -> Optional[ModelConfig]:
    """The ModelConfig recorded with the weights file ``path`` (header or sidecar), or None."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if METADATA_KEY in meta:
            return config_from_dict(json.loads(meta[METADATA_KEY]), f"{path} (header {METADATA_KEY})")
    side = sidecar_path(path)
    if side.is_file():
        data = json.loads(side.read_text())
        if METADATA_KEY in data:
            return config_from_dict(data[METADATA_KEY], str(side))
    return None


def architecture_name(cfg: ModelConfig) -> str:
    """The preset name when ``cfg`` is one (ignoring training-only fields), else ``custom-<hash>``.

    Used as clip_benchmark's ``model`` column: equal architectures get equal names.
    """
    from clipl.models.registry import list_presets, preset

    plain = without_training_fields(cfg, temperature=True)
    for name in list_presets():
        ref = preset(name)
        if dataclasses.replace(ref, init_logit_bias=plain.init_logit_bias) == plain:
            return name
    text = cfg.text
    digest = hashlib.sha1(config_to_json(plain).encode()).hexdigest()[:8]
    return f"custom-{cfg.image.arch}-{getattr(text, 'arch', 'text')}-{digest}"


def describe_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Field paths where two ModelConfigs differ, as "path: a != b" strings."""
    out: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y) and type(x) is type(y):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name), getattr(y, f.name), f"{path}.{f.name}" if path else f.name)
        elif x != y:
            out.append(f"{path}: {x!r} != {y!r}")

    walk(a, b, "")
    return out
