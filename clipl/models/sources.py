"""Every place CLIP weights come from, read into (clipl state dict, recorded architecture or None).

- a clipl Lightning ``.ckpt``: weights and the run's config (the exact model it trained);
- a DeepSpeed ZeRO checkpoint folder: consolidated first (clipl.distributed.convert);
- ``.safetensors`` (architecture in the header when clipl wrote it) or a torch file (architecture
  in ``<file>.json`` beside it when clipl wrote it); TorchScript archives only when trusted;
- an open_clip model folder (``open_clip_config.json``; ``local-dir:PATH`` is accepted too);
- a Hugging Face ``CLIPModel`` folder (``config.json`` + ``model.safetensors``/``pytorch_model.bin``).
"""

from __future__ import annotations

import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from clipl.codec import from_container
from clipl.models.config import ModelConfig, move_legacy_logit_init
from clipl.models.metadata import read_recorded_config

PathLike = Union[str, Path]
# Prefixes that wrappers add to every key: DDP/DeepSpeed ("module."), the LightningModule attribute
# ("model."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Non-parameter entries of OpenAI's TorchScript state dicts (open_clip drops them too).
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Source:
    """Weights read from one place, with what is known of their architecture."""

    state_dict: dict[str, torch.Tensor]
    """The model's weights in clipl's (OpenAI) layout, wrappers and prefixes removed."""
    config: Optional[ModelConfig]
    """The architecture recorded with the weights; None for a bare state dict."""
    kind: str
    """What was read: "clipl_checkpoint", "zero_checkpoint", "safetensors", "torch", "torchscript",
    "open_clip_dir", "hf_dir"."""
    path: Path
    step: Optional[int] = None
    """The optimizer step of a training checkpoint."""
    saved_config: Optional[dict] = None
    """A clipl checkpoint's whole run config as plain data (its ``hyper_parameters["config"]``);
    clipl.config.io.run_config_from reads it into a RunConfig."""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    # torch.jit.save archives hold the module's Python code and constants beside the tensors.
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The model tensors of a state dict or ``{"state_dict": ...}`` wrapper, wrapper prefixes removed."""
    wrapped = isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)
    if wrapped:
        obj = obj["state_dict"]  # {"state_dict": ...} wrappers, Lightning checkpoints
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: expected a state dict (name -> tensor) or a {{'state_dict': ...}} wrapper")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and k not in _OPENAI_EXTRA_KEYS}
    if wrapped and any(k.startswith("model.") for k in sd):
        # A LightningModule (clipl.module.CLIPModule) holds the CLIPModel as `model`; other entries
        # (objective buffers, ...) are not part of the model's weights.
        sd = {k: v for k, v in sd.items() if k.startswith("model.")}
    stripped = True
    while stripped:  # e.g. "model.module." from a Lightning module around a DDP model
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                stripped = True
    return sd


def checkpoint_config(hp: dict, source: str) -> ModelConfig:
    """The model a clipl checkpoint's run built: the model section of its ``hyper_parameters["config"]``
    (an older clipl's objective temperature/bias moved in, as RunConfig.upgrade_legacy does). Only that
    section is read, so a checkpoint whose other sections come from another run schema still loads."""
    try:
        saved = move_legacy_logit_init(dict(hp["config"]))
        return from_container(ModelConfig, dict(saved["model"]))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source}: checkpoint hyper_parameters lack a readable config.model ({err}); "
                         "not a clipl checkpoint? pass preset= to name the architecture") from err


def _read_torch_file(path: Path, trust_torchscript: bool) -> Source:
    if _is_torchscript(path):
        if not trust_torchscript:
            raise ValueError(
                f"{path} is a TorchScript archive (like OpenAI's released CLIP .pt files). Loading one runs "
                "the Python code stored inside it, so clipl refuses by default. If you trust its source, pass "
                "trust_torchscript=True, or convert it once to a state dict and load that."
            )
        sd = unwrap(torch.jit.load(str(path), map_location="cpu").state_dict(), str(path))
        return Source(sd, None, "torchscript", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True): it stores Python objects besides "
            f"tensors ({err}). Re-save its state_dict() with torch.save or safetensors."
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict) and "config" in obj["hyper_parameters"]:
        cfg = checkpoint_config(obj["hyper_parameters"], str(path))
        sd = unwrap(obj, str(path))
        saved = dict(obj["hyper_parameters"]["config"])
        return Source(sd, cfg, "clipl_checkpoint", path, obj.get("global_step"), saved)
    return Source(unwrap(obj, str(path)), read_recorded_config(path), "torch", path)


def _is_zero_dir(path: Path) -> bool:
    return (path / "latest").is_file() or any(path.glob("*/*_model_states.pt"))


def read_source(path: PathLike, trust_torchscript: bool = False) -> Source:
    """Read weights (and their architecture, where recorded) from any supported source."""
    from clipl.models import hf_format, open_clip_format

    text = str(path)
    local_dir = text.startswith(open_clip_format.LOCAL_DIR)
    p = Path(text[len(open_clip_format.LOCAL_DIR):] if local_dir else text)
    if not p.exists():
        raise FileNotFoundError(f"weights not found: {p}")
    if p.is_dir():
        if open_clip_format.is_open_clip_dir(p):
            cfg, weights = open_clip_format.read_open_clip_dir(p)
            inner = read_source(weights)
            return Source(inner.state_dict, cfg, "open_clip_dir", p)
        if local_dir:
            raise FileNotFoundError(f"local-dir:{p} has no {open_clip_format.CONFIG_FILE}")
        if hf_format.is_hf_dir(p):
            cfg, sd = hf_format.read_hf_dir(p)
            return Source(sd, cfg, "hf_dir", p)
        if _is_zero_dir(p):
            from clipl.distributed.convert import convert_zero_checkpoint

            with tempfile.TemporaryDirectory() as tmp:
                ckpt = convert_zero_checkpoint(p, Path(tmp) / "consolidated.ckpt")
                src = _read_torch_file(ckpt, trust_torchscript=False)
            src.kind, src.path = "zero_checkpoint", p
            return src
        if (p / open_clip_format.WEIGHTS_FILE).is_file():  # an open_clip weights folder without a config
            return read_source(p / open_clip_format.WEIGHTS_FILE)
        raise FileNotFoundError(
            f"{p} is a folder but none of: an open_clip folder ({open_clip_format.CONFIG_FILE}), a Hugging Face "
            f"CLIPModel folder (config.json), a DeepSpeed checkpoint folder (latest), or {open_clip_format.WEIGHTS_FILE}"
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return Source(unwrap(load_file(str(p), device="cpu"), str(p)), read_recorded_config(p), "safetensors", p)
    return _read_torch_file(p, trust_torchscript)
