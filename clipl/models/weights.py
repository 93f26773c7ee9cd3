"""Loading and saving CLIP weights in OpenAI's state-dict layout (shared by open_clip's ``CLIP``).

Files are read with ``torch.load(weights_only=True)`` or safetensors only: no pickled code runs.
OpenAI's released ``.pt`` files are TorchScript archives, which execute code when loaded; they are
refused unless the caller passes ``trust_torchscript=True``.

The architecture is never guessed: it comes from what was recorded with the weights (a clipl
checkpoint's run config, clipl's export metadata, an open_clip or Hugging Face config) or from an
explicit ``preset=``/``model=``. Shapes alone cannot tell the MLP activation (GELU vs QuickGELU) or
the number of attention heads, so a bare state dict without either is refused, naming the
architectures its shapes fit.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.vit import ViTConfig
from clipl.models.config import ModelConfig
from clipl.models.metadata import (
    METADATA_KEY,
    config_to_json,
    describe_differences,
    without_training_fields,
    write_sidecar,
)
from clipl.models.sources import Source, read_source

PathLike = Union[str, Path]
# open_clip's exported model folder (``open_clip.push_to_hf_hub`` layout).
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def load_state_dict_file(path: PathLike, trust_torchscript: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``: any source clipl.models.sources reads (.safetensors, a torch
    file or Lightning checkpoint, an open_clip or Hugging Face folder, a ZeRO checkpoint folder).

    Torch files load with ``weights_only=True``; wrappers (``{"state_dict": ...}``, Lightning
    checkpoints) and the prefixes ``module.``/``model.``/``_orig_mod.`` are removed.
    """
    return read_source(path, trust_torchscript=trust_torchscript).state_dict


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _grid_side(n_positions: int, key: str) -> int:
    side = round((n_positions - 1) ** 0.5)
    if side * side + 1 != n_positions:
        raise ValueError(f"{key} has {n_positions} rows: not a square grid plus one token")
    return side


def infer_model_config(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """The sizes of an OpenAI-layout state dict, read from its tensor shapes, as a ModelConfig.

    What shapes cannot show is filled with OpenAI's conventions (heads of width 64, QuickGELU), so
    the result is only a guess there: load_model never builds a model from it alone.
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


def resolve_architecture(name: Union[str, ModelConfig]) -> ModelConfig:
    """A ModelConfig from a clipl preset name, an open_clip model name (``ViT-B-32``, ``RN50-quickgelu``),
    or a ModelConfig (returned as is)."""
    if isinstance(name, ModelConfig):
        return name
    from clipl.models.registry import list_presets, preset

    if name in list_presets():
        return preset(name)
    from clipl.models.open_clip_format import open_clip_model_config

    return open_clip_model_config(name)


def _shape_key(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with what shapes cannot tell (heads, activation, temperature) set to fixed values."""
    def tower(t):
        names = {f.name for f in dataclasses.fields(t)}
        return dataclasses.replace(t, **{k: v for k, v in (("heads", None), ("act", "quick_gelu")) if k in names})

    cfg = without_training_fields(cfg, temperature=True)
    return dataclasses.replace(cfg, image=tower(cfg.image), text=tower(cfg.text), init_logit_bias=None)


def _act_name(cfg: ModelConfig) -> str:
    acts = {getattr(t, "act", None) for t in (cfg.image, cfg.text)} - {None}
    return "/".join(sorted({"quick_gelu": "QuickGELU", "gelu": "GELU"}.get(a, a) for a in acts))


def shape_candidates(sd: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(how to name it, description) of every clipl preset and open_clip model whose shapes fit ``sd``."""
    from clipl.models.registry import list_presets, preset

    key = _shape_key(infer_model_config(sd))
    out = [(f"preset={n!r}", f"clipl preset, {_act_name(preset(n))}") for n in list_presets()
           if _shape_key(preset(n)) == key]
    out += [(f"model={n!r}", f"open_clip, {_act_name(cfg)}") for n, cfg in _open_clip_configs() if _shape_key(cfg) == key]
    return out


@functools.lru_cache(maxsize=1)
def _open_clip_configs() -> tuple[tuple[str, ModelConfig], ...]:
    """(name, ModelConfig) of every open_clip model clipl's towers can express; empty without open_clip."""
    try:
        import open_clip

        from clipl.models.open_clip_format import from_open_clip_cfg
    except ImportError:
        return ()
    found = []
    for name in open_clip.list_models():
        try:
            found.append((name, from_open_clip_cfg(open_clip.get_model_config(name), name)))
        except (ValueError, KeyError, TypeError):
            continue
    return tuple(found)


def _refuse_bare(src: Source) -> None:
    where = str(src.path)
    try:
        candidates = shape_candidates(src.state_dict)
    except ValueError as err:
        raise ValueError(f"{where}: no architecture is recorded with these weights and {err}. Pass preset= "
                         "(a preset name or a ModelConfig) or model= (an open_clip model name)") from None
    listed = "; ".join(f"{how} ({what})" for how, what in candidates) or "none of the presets or open_clip models"
    raise ValueError(
        f"{where}: a bare state dict: its shapes fix the sizes but not the MLP activation (GELU or QuickGELU) "
        f"nor the attention heads, and clipl does not guess them. Name the architecture: load_model(path, "
        f"preset=...) / model=... (clipl eval|export --model NAME). Architectures with these shapes: {listed}. "
        "OpenAI's weights are QuickGELU, most LAION/open_clip weights GELU. For a custom model pass "
        "preset=ModelConfig(...). Files written by `clipl export` or training carry their architecture."
    )


def load_checkpoint(
    path: PathLike,
    preset: Union[str, ModelConfig, None] = None,
    model: Optional[str] = None,
    trust_torchscript: bool = False,
) -> tuple[nn.Module, Source]:
    """(CLIPModel in fp32 with the weights of ``path``, what was read); see :func:`load_model`."""
    from clipl.models.clip import CLIPModel  # not clipl.models.build_model: the package imports this module

    if preset is not None and model is not None:
        raise ValueError("pass preset= or model=, not both")
    src = read_source(path, trust_torchscript=trust_torchscript)
    explicit = None if preset is None and model is None else resolve_architecture(preset if model is None else model)
    if explicit is not None and src.config is not None:
        diff = describe_differences(_plain(src.config), _plain(explicit))
        if diff:
            raise ValueError(
                f"{path}: its recorded architecture differs from the one named ({'; '.join(diff[:4])}). Omit "
                "preset=/model= to use the recorded one."
            )
    cfg = explicit or src.config
    if cfg is None:
        _refuse_bare(src)
    net = CLIPModel.from_config(cfg)
    check_state_dict(net, src.state_dict, source=str(path))
    net.load_state_dict(src.state_dict, strict=True)
    return net, src


def _plain(cfg: ModelConfig) -> ModelConfig:
    # Training-only switches are not architecture.
    return without_training_fields(cfg, temperature=True)


def load_model(
    path: PathLike,
    preset: Union[str, ModelConfig, None] = None,
    model: Optional[str] = None,
    trust_torchscript: bool = False,
) -> nn.Module:
    """A CLIPModel (fp32) with the weights of ``path``.

    ``path``: a clipl ``.ckpt`` (the exact model of its run config), a ZeRO checkpoint folder, a
    clipl export (architecture in its metadata), an open_clip folder (``local-dir:`` accepted), a
    Hugging Face ``CLIPModel`` folder, or a bare OpenAI-layout state dict (.safetensors/.pt).
    ``preset``: a clipl preset name or ModelConfig; ``model``: an open_clip model name (or preset).
    A bare state dict needs one of them; one that contradicts a recorded architecture is refused.
    """
    return load_checkpoint(path, preset=preset, model=model, trust_torchscript=trust_torchscript)[0]


def export_state_dict(model_or_sd, path: PathLike, overwrite: bool = False,
                      config: Optional[ModelConfig] = None) -> Path:
    """Write OpenAI-layout weights to ``path``: safetensors for ``.safetensors``, else torch.save
    (``.pt``/``.pth``/``.bin``). An existing file is kept unless ``overwrite=True``.

    The architecture (``config``, or the model's own ``config`` when a CLIPModel is given) is
    recorded in the safetensors header, or for torch files in ``<path>.json`` beside them.
    """
    path = Path(path)
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{path}: unknown weights suffix {path.suffix!r}; use .safetensors, .pt, .pth or .bin")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if config is None and isinstance(model_or_sd, nn.Module):
        config = getattr(model_or_sd, "config", None)
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else dict(model_or_sd)
    # Own contiguous CPU copies: safetensors refuses views that share storage.
    sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"format": "pt", METADATA_KEY: config_to_json(config)} if config else None)
    else:
        torch.save(sd, path)
        if config is not None:
            write_sidecar(path, config)
    return path


__all__ = ["check_state_dict", "export_state_dict", "infer_model_config", "load_checkpoint", "load_model",
           "load_state_dict_file", "resolve_architecture", "shape_candidates"]
