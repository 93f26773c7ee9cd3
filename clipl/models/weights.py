"""Import and export of CLIP weights in OpenAI's state-dict layout (shared by open_clip's ``CLIP``).

Files are read with ``torch.load(weights_only=True)`` or safetensors only: no pickled code runs.
OpenAI's released ``.pt`` files are TorchScript archives, which execute code when loaded; they are
refused unless the caller passes ``trust_torchscript=True``.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.vit import ViTConfig
from clipl.models.config import ModelConfig

PathLike = Union[str, Path]
# open_clip's exported model folder (``open_clip.push_to_hf_hub`` layout).
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
# Prefixes that wrappers add to every key: DDP/DeepSpeed ("module."), the LightningModule attribute
# ("model."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Non-parameter entries of OpenAI's TorchScript state dicts (open_clip drops them too).
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    # torch.jit.save archives hold the module's Python code and constants beside the tensors.
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _unwrap(obj, source: str) -> dict[str, torch.Tensor]:
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


def load_state_dict_file(path: PathLike, trust_torchscript: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``: .safetensors, a torch file, or an open_clip model folder.

    Torch files load with ``weights_only=True``; wrappers (``{"state_dict": ...}``, Lightning
    checkpoints) and the prefixes ``module.``/``model.``/``_orig_mod.`` are removed.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        if not (path / OPEN_CLIP_WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} is a folder without {OPEN_CLIP_WEIGHTS} (open_clip's exported layout)")
        path = path / OPEN_CLIP_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _unwrap(load_file(str(path), device="cpu"), str(path))
    if _is_torchscript(path):
        if not trust_torchscript:
            raise ValueError(
                f"{path} is a TorchScript archive (like OpenAI's released CLIP .pt files). Loading one runs "
                "the Python code stored inside it, so clipl refuses by default. If you trust its source, pass "
                "trust_torchscript=True, or convert it once to a state dict and load that."
            )
        return _unwrap(torch.jit.load(str(path), map_location="cpu").state_dict(), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True): it stores Python objects besides "
            f"tensors ({err}). Re-save its state_dict() with torch.save or safetensors."
        ) from err
    return _unwrap(obj, str(path))


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _grid_side(n_positions: int, key: str) -> int:
    side = round((n_positions - 1) ** 0.5)
    if side * side + 1 != n_positions:
        raise ValueError(f"{key} has {n_positions} rows: not a square grid plus one token")
    return side


def infer_model_config(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig of an OpenAI-layout state dict, read from its tensor shapes.

    Heads follow OpenAI's head-width-64 rule (they are not visible in the shapes).
    """
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise ValueError(f"cannot infer the architecture: the state dict has no {key!r} (OpenAI layout expected)")
        return sd[key]

    if "visual.class_embedding" in sd:
        conv = need("visual.conv1.weight")
        width, patch = conv.shape[0], conv.shape[-1]
        grid = _grid_side(need("visual.positional_embedding").shape[0], "visual.positional_embedding")
        hidden = need("visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0]
        image = ViTConfig(
            image_size=grid * patch, patch_size=patch, width=width, mlp_ratio=hidden / width,
            layers=_count(sd, r"visual\.transformer\.resblocks\.(\d+)\."),
        )
        embed_dim = need("visual.proj").shape[1]
    elif "visual.attnpool.positional_embedding" in sd:
        grid = _grid_side(sd["visual.attnpool.positional_embedding"].shape[0], "visual.attnpool.positional_embedding")
        image = ModifiedResNetConfig(
            image_size=grid * 32,  # the ResNet downsamples by 32
            layers=[_count(sd, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5)],
            width=need("visual.layer1.0.conv1.weight").shape[0],
        )
        embed_dim = need("visual.attnpool.c_proj.weight").shape[0]
    else:
        raise ValueError("cannot infer the image tower: neither 'visual.class_embedding' (ViT) nor "
                         "'visual.attnpool.positional_embedding' (ModifiedResNet) is in the state dict")
    width = need("ln_final.weight").shape[0]
    text = TextTransformerConfig(
        context_length=need("positional_embedding").shape[0],
        vocab_size=need("token_embedding.weight").shape[0],
        width=width,
        layers=_count(sd, r"transformer\.resblocks\.(\d+)\."),
        mlp_ratio=need("transformer.resblocks.0.mlp.c_fc.weight").shape[0] / width,
    )
    if need("text_projection").shape[1] != embed_dim:
        raise ValueError(f"text_projection projects to {sd['text_projection'].shape[1]} but the image tower to {embed_dim}")
    bias = float(sd["logit_bias"]) if "logit_bias" in sd else None
    return ModelConfig(embed_dim=embed_dim, image=image, text=text, init_logit_bias=bias)


def check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise a ValueError naming the first shape mismatch, or the missing and unexpected keys."""
    own = model.state_dict()
    for key, value in own.items():
        if key in sd and tuple(sd[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{source} does not fit this model: first mismatch at {key!r}: checkpoint {tuple(sd[key].shape)} "
                f"vs model {tuple(value.shape)} (a different architecture? name the right preset, or omit "
                "the preset to infer it from the shapes)"
            )
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        def show(keys):
            return ", ".join(repr(k) for k in keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = [f"missing keys: {show(missing)}" if missing else "", f"unexpected keys: {show(unexpected)}" if unexpected else ""]
        raise ValueError(f"{source} does not fit this model: " + "; ".join(p for p in parts if p))


def load_model(path: PathLike, preset: Union[str, ModelConfig, None] = None, trust_torchscript: bool = False):
    """A CLIPModel (fp32) with the weights of ``path``.

    Its architecture is ``preset`` (a preset name or a ModelConfig, needed for timm/HF towers) or,
    when None, inferred from the tensor shapes of an OpenAI-layout state dict.
    """
    from clipl.models import build_model

    sd = load_state_dict_file(path, trust_torchscript=trust_torchscript)
    if preset is None:
        try:
            cfg = infer_model_config(sd)
        except ValueError as err:
            raise ValueError(f"{path}: {err}. For other layouts pass preset= (a preset name or a ModelConfig)") from None
    else:
        cfg = preset
    model = build_model(cfg)
    check_state_dict(model, sd, source=str(path))
    model.load_state_dict(sd, strict=True)
    return model


def export_state_dict(model_or_sd, path: PathLike, overwrite: bool = False) -> Path:
    """Write OpenAI-layout weights to ``path``: safetensors for ``.safetensors``, else torch.save
    (``.pt``/``.pth``/``.bin``). An existing file is kept unless ``overwrite=True``."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{path}: unknown weights suffix {path.suffix!r}; use .safetensors, .pt, .pth or .bin")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else dict(model_or_sd)
    # Own contiguous CPU copies: safetensors refuses views that share storage.
    sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


__all__ = ["check_state_dict", "export_state_dict", "infer_model_config", "load_model", "load_state_dict_file"]
