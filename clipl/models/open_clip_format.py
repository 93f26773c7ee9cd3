"""open_clip's model configs (``model_cfg`` dicts, ``open_clip_config.json`` folders) <-> ModelConfig.

open_clip's ``CLIP`` class keeps OpenAI's state-dict layout, which is clipl's, so only the
architecture needs translating. open_clip has one ``quick_gelu`` flag for both towers and expresses
heads as a head width; features clipl's towers do not implement (layer scale, attentional pooling,
custom text towers ...) are refused by name rather than dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from clipl.models.config import ModelConfig

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
LOCAL_DIR = "local-dir:"

# open_clip fields that must keep their default for clipl's towers to compute the same function.
_VISION_DEFAULTS = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_model_name": None,
}
_TEXT_DEFAULTS = {
    "ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
    "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "hf_model_name": None,
}
# Accepted as equivalent to the defaults above.
_SAME = {"block_type": ("default",), "pos_embed_type": ("learned",)}


def _refuse_features(section: dict, defaults: dict, where: str) -> None:
    for key, default in defaults.items():
        value = section.get(key, default)
        if value != default and value not in _SAME.get(key, ()):
            raise ValueError(f"open_clip {where}.{key}={value!r} is not supported by clipl's towers "
                             f"(only {default!r}); this model cannot be loaded as a clipl model")


def from_open_clip_cfg(model_cfg: dict, source: str = "open_clip config") -> ModelConfig:
    """The ModelConfig of an open_clip ``model_cfg`` (``quick_gelu`` decides the activation exactly)."""
    from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
    from clipl.models.backbones.text_transformer import TextTransformerConfig
    from clipl.models.backbones.vit import ViTConfig

    if model_cfg.get("custom_text") or "multimodal_cfg" in model_cfg:
        raise ValueError(f"{source}: custom text towers / CoCa models use another layout; not loadable by clipl")
    vision, text = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    _refuse_features(vision, _VISION_DEFAULTS, "vision_cfg")
    _refuse_features(text, _TEXT_DEFAULTS, "text_cfg")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    size = vision.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"{source}: non-square image_size {size} (clipl's towers are square)")
        size = size[0]
    head_width = vision.get("head_width", 64)
    width = vision.get("width", 768)  # open_clip's CLIPVisionCfg default, for ResNets too
    if isinstance(vision.get("layers"), (list, tuple)):
        image: Any = ModifiedResNetConfig(image_size=size, layers=list(vision["layers"]), width=width,
                                          heads=width * 32 // head_width)
    else:
        image = ViTConfig(image_size=size, patch_size=vision.get("patch_size", 16), width=width,
                          layers=vision.get("layers", 12), heads=width // head_width,
                          mlp_ratio=float(vision.get("mlp_ratio", 4.0)), act=act)
    text_cfg = TextTransformerConfig(
        context_length=text.get("context_length", 77), vocab_size=text.get("vocab_size", 49408),
        width=text.get("width", 512), heads=text.get("heads", 8), layers=text.get("layers", 12),
        mlp_ratio=float(text.get("mlp_ratio", 4.0)), act=act,
    )
    out = ModelConfig(embed_dim=model_cfg["embed_dim"], image=image, text=text_cfg)
    if model_cfg.get("init_logit_bias") is not None:
        out.init_logit_bias = float(model_cfg["init_logit_bias"])
    return out


def to_open_clip_cfg(cfg: ModelConfig) -> dict:
    """open_clip's ``model_cfg`` for ``cfg``; a ValueError saying why when open_clip's CLIP cannot express it."""
    from clipl.models.layers import resolve_heads

    image, text = cfg.image, cfg.text
    if text.arch != "text_transformer":
        raise ValueError(f"open_clip export supports clipl's text_transformer text tower, not {text.arch!r}")
    t_heads = resolve_heads(text.heads, max(1, text.width // 64), text.width, "text.heads")
    out: dict[str, Any] = {"embed_dim": cfg.embed_dim, "quick_gelu": text.act == "quick_gelu"}
    if text.act not in ("quick_gelu", "gelu"):
        raise ValueError(f"open_clip has no activation {text.act!r} (only GELU and QuickGELU)")
    if image.arch == "vit":
        if image.act != text.act:
            raise ValueError(f"open_clip uses one activation for both towers; image.act={image.act!r} "
                             f"but text.act={text.act!r}")
        heads = resolve_heads(image.heads, max(1, image.width // 64), image.width, "image.heads")
        vision = {"image_size": image.image_size, "patch_size": image.patch_size, "width": image.width,
                  "layers": image.layers, "head_width": image.width // heads, "mlp_ratio": image.mlp_ratio}
    elif image.arch == "modified_resnet":
        heads = resolve_heads(image.heads, max(1, image.width * 32 // 64), image.width * 32, "image.heads")
        vision = {"image_size": image.image_size, "layers": list(image.layers), "width": image.width,
                  "head_width": image.width * 32 // heads}
    else:
        raise ValueError(f"open_clip export supports ViT and ModifiedResNet image towers, not {image.arch!r} "
                         "(a timm tower's keys follow another layout)")
    out["vision_cfg"] = vision
    out["text_cfg"] = {"context_length": text.context_length, "vocab_size": text.vocab_size, "width": text.width,
                       "heads": t_heads, "layers": text.layers, "mlp_ratio": text.mlp_ratio}
    if cfg.init_logit_bias is not None:
        out["init_logit_bias"] = cfg.init_logit_bias
    return out


def preprocess_cfg(image_size: int) -> dict:
    """open_clip's preprocess_cfg matching clipl's evaluation transform (bicubic short side, centre crop)."""
    from clipl.data.transforms import OPENAI_MEAN, OPENAI_STD

    return {"size": image_size, "mode": "RGB", "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
            "interpolation": "bicubic", "resize_mode": "shortest"}


def is_open_clip_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_open_clip_dir(path: Path) -> tuple[ModelConfig, Path]:
    """(ModelConfig, weights file) of an open_clip model folder (``open_clip_config.json`` + weights)."""
    data = json.loads((path / CONFIG_FILE).read_text())
    if "model_cfg" not in data:
        raise ValueError(f"{path / CONFIG_FILE} has no 'model_cfg' (open_clip's exported layout)")
    names = (WEIGHTS_FILE, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
             "open_clip_pytorch_model.pth")
    weights = next((path / n for n in names if (path / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{path} has {CONFIG_FILE} but no weights ({', '.join(names)})")
    return from_open_clip_cfg(data["model_cfg"], str(path / CONFIG_FILE)), weights


def write_open_clip_dir(out: Path, cfg: ModelConfig, state_dict: dict, metadata: Optional[dict] = None) -> Path:
    """Write ``out/open_clip_config.json`` and ``out/open_clip_model.safetensors`` (a new folder)."""
    from safetensors.torch import save_file

    model_cfg = to_open_clip_cfg(cfg)  # before creating anything: an unsupported model writes nothing
    out.mkdir(parents=True, exist_ok=False)
    (out / CONFIG_FILE).write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(cfg.image.image_size)}, indent=2) + "\n")
    save_file(state_dict, str(out / WEIGHTS_FILE), metadata=metadata)
    return out


def open_clip_model_config(name: str) -> ModelConfig:
    """The ModelConfig of an open_clip model name (``ViT-B-32``, ``RN50-quickgelu`` ...); needs open_clip."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(f"open_clip model name {name!r} needs open_clip: pip install open_clip_torch") from err
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        from clipl.registry import did_you_mean

        raise ValueError(f"{name!r} is neither a clipl preset nor an open_clip model name."
                         + did_you_mean(name, open_clip.list_models(), n=4, cutoff=0.5))
    return from_open_clip_cfg(model_cfg, f"open_clip model {name!r}")
