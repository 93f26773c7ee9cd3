"""Hugging Face ``transformers.CLIPModel`` folders <-> clipl (ViT image tower + OpenAI text tower).

The two layouts hold the same tensors under other names, with three reshapes: the fused attention
``in_proj`` is split into ``q_proj``/``k_proj``/``v_proj``, and the two projections are stored
transposed (``nn.Linear`` weights). Tokenizer files are written from clipl's own BPE vocabulary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from clipl.models.config import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
_ACTS = ("quick_gelu", "gelu")
_LN_EPS = 1e-5  # clipl's LayerNorm

# clipl (OpenAI layout) -> HF, outside the transformer blocks.
_TOP = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
# Inside one block: clipl suffix -> HF suffix (the fused in_proj is handled separately).
_BLOCK = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_TOWERS = {"visual.transformer.resblocks": "vision_model.encoder.layers", "transformer.resblocks": "text_model.encoder.layers"}


def _check_exportable(cfg: ModelConfig) -> None:
    if cfg.image.arch != "vit":
        raise ValueError(f"transformers.CLIPModel has a ViT image tower only; this model's is {cfg.image.arch!r} "
                         "(export it with --format open_clip or openai instead)")
    if cfg.text.arch != "text_transformer":
        raise ValueError(f"transformers.CLIPModel has OpenAI's text tower only; this model's is {cfg.text.arch!r}")
    if cfg.init_logit_bias is not None:
        raise ValueError("transformers.CLIPModel has no logit bias (SigLIP-style); export to open_clip instead")
    for tower in (cfg.image, cfg.text):
        if tower.act not in _ACTS:
            raise ValueError(f"activation {tower.act!r} has no transformers name")


def to_hf_config(cfg: ModelConfig) -> Any:
    """A ``transformers.CLIPConfig`` for ``cfg`` (ViT + text transformer)."""
    from transformers import CLIPConfig

    from clipl.models.layers import resolve_heads

    _check_exportable(cfg)
    image, text = cfg.image, cfg.text
    vision = {
        "hidden_size": image.width, "intermediate_size": int(image.width * image.mlp_ratio),
        "num_hidden_layers": image.layers,
        "num_attention_heads": resolve_heads(image.heads, max(1, image.width // 64), image.width, "image.heads"),
        "image_size": image.image_size, "patch_size": image.patch_size, "num_channels": 3,
        "hidden_act": image.act, "layer_norm_eps": _LN_EPS, "projection_dim": cfg.embed_dim,
    }
    text_cfg = {
        "vocab_size": text.vocab_size, "hidden_size": text.width, "intermediate_size": int(text.width * text.mlp_ratio),
        "num_hidden_layers": text.layers,
        "num_attention_heads": resolve_heads(text.heads, max(1, text.width // 64), text.width, "text.heads"),
        "max_position_embeddings": text.context_length, "hidden_act": text.act, "layer_norm_eps": _LN_EPS,
        # The end-of-text token is the vocabulary's last id: HF pools at its first occurrence, clipl at
        # the row's argmax, which is the same position. Padding is id 0, as clipl's tokenizer pads.
        "bos_token_id": text.vocab_size - 2, "eos_token_id": text.vocab_size - 1, "pad_token_id": 0,
        "projection_dim": cfg.embed_dim,
    }
    return CLIPConfig(text_config=text_cfg, vision_config=vision, projection_dim=cfg.embed_dim,
                      logit_scale_init_value=cfg.init_logit_scale, architectures=["CLIPModel"])


def from_hf_config(hf: Any, source: str = "config.json") -> ModelConfig:
    """The ModelConfig of a ``transformers.CLIPConfig`` (activations exact, heads as stored)."""
    from clipl.models.backbones.text_transformer import TextTransformerConfig
    from clipl.models.backbones.vit import ViTConfig

    v, t = hf.vision_config, hf.text_config
    for name, sub in (("vision_config", v), ("text_config", t)):
        if sub.hidden_act not in _ACTS:
            raise ValueError(f"{source}: {name}.hidden_act={sub.hidden_act!r} is not supported (clipl has {_ACTS})")
        if abs(sub.layer_norm_eps - _LN_EPS) > 1e-12:
            raise ValueError(f"{source}: {name}.layer_norm_eps={sub.layer_norm_eps} (clipl's LayerNorm uses {_LN_EPS})")
    if getattr(v, "num_channels", 3) != 3:
        raise ValueError(f"{source}: vision_config.num_channels={v.num_channels} (RGB only)")
    image = ViTConfig(image_size=v.image_size, patch_size=v.patch_size, width=v.hidden_size, layers=v.num_hidden_layers,
                      heads=v.num_attention_heads, mlp_ratio=v.intermediate_size / v.hidden_size, act=v.hidden_act)
    text = TextTransformerConfig(context_length=t.max_position_embeddings, vocab_size=t.vocab_size, width=t.hidden_size,
                                 heads=t.num_attention_heads, layers=t.num_hidden_layers,
                                 mlp_ratio=t.intermediate_size / t.hidden_size, act=t.hidden_act)
    return ModelConfig(embed_dim=hf.projection_dim, image=image, text=text,
                       init_logit_scale=float(hf.logit_scale_init_value))


def to_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """clipl (OpenAI layout, ViT) -> ``CLIPModel`` state dict."""
    out: dict[str, torch.Tensor] = {}
    block = re.compile(r"^(visual\.transformer\.resblocks|transformer\.resblocks)\.(\d+)\.(.+)$")
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif m := block.match(key):
            prefix = f"{_TOWERS[m.group(1)]}.{m.group(2)}"
            rest = m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}.self_attn.{name}.{kind}"] = part.contiguous()
            else:
                sub, _, leaf = rest.rpartition(".")
                if sub not in _BLOCK:
                    raise KeyError(f"no transformers name for {key!r}")
                out[f"{prefix}.{_BLOCK[sub]}.{leaf}"] = value
        else:
            raise KeyError(f"no transformers name for {key!r} (a ViT + text-transformer model expected)")
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CLIPModel`` state dict -> clipl (OpenAI layout)."""
    top = {v: k for k, v in _TOP.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    towers = {v: k for k, v in _TOWERS.items()}
    block_names = {v: k for k, v in _BLOCK.items()}
    block = re.compile(r"^(vision_model\.encoder\.layers|text_model\.encoder\.layers)\.(\d+)\.(.+)$")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue  # a non-persistent buffer in recent transformers, saved by old versions
        if key in top:
            out[top[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        elif m := block.match(key):
            prefix = f"{towers[m.group(1)]}.{m.group(2)}"
            sub, _, leaf = m.group(3).rpartition(".")
            if sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault(f"{prefix}.attn.in_proj_{leaf}", {})[sub[-6]] = value
            elif sub in block_names:
                out[f"{prefix}.{block_names[sub]}.{leaf}"] = value
            else:
                raise KeyError(f"{key!r} has no clipl counterpart")
        else:
            raise KeyError(f"{key!r} has no clipl counterpart (a transformers CLIPModel expected)")
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"{key}: q/k/v projections incomplete ({sorted(parts)})")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def is_hf_dir(path: Path) -> bool:
    if not (path.is_dir() and (path / CONFIG_FILE).is_file()):
        return False
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("model_type") == "clip"
    except json.JSONDecodeError:
        return False


def read_hf_dir(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, clipl state dict) of a ``CLIPModel.save_pretrained`` folder."""
    try:
        from transformers import CLIPConfig
    except ImportError as err:
        raise ImportError(f"{path} is a Hugging Face CLIPModel folder: reading it needs pip install 'clipl[hf]'") from err
    cfg = from_hf_config(CLIPConfig.from_pretrained(str(path)), str(path / CONFIG_FILE))
    weights = next((path / n for n in WEIGHTS_FILES if (path / n).is_file()), None)
    if weights is None:
        if any(path.glob("*.index.json")):
            raise ValueError(f"{path}: sharded weights are not supported; re-save with a larger max_shard_size")
        raise FileNotFoundError(f"{path} has {CONFIG_FILE} but no weights ({', '.join(WEIGHTS_FILES)})")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(weights), device="cpu")
    else:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
    return cfg, from_hf_state_dict(sd)


def write_tokenizer(out: Path, context_length: int) -> None:
    """vocab.json/merges.txt from clipl's tokenizer, saved through transformers' own CLIP tokenizer classes."""
    from transformers import CLIPTokenizerFast

    from clipl.tokenizer import get_tokenizer

    tok = get_tokenizer()
    # Same ids; the special tokens under the names transformers' CLIP tokenizer expects.
    names = {tok.decoder[tok.sot_token_id]: "<|startoftext|>", tok.decoder[tok.eot_token_id]: "<|endoftext|>"}
    vocab = {names.get(t, t): i for t, i in tok.encoder.items()}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tok.ranks, key=tok.ranks.get)
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    # Padding stays transformers' default (<|endoftext|>, where clipl pads with id 0): CLIPModel pools
    # at the first end-of-text token under a causal mask, so what follows it never changes a feature.
    hf_tok = CLIPTokenizerFast.from_pretrained(str(out), model_max_length=context_length)
    hf_tok.save_pretrained(str(out))


def write_hf_dir(out: Path, cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> Path:
    """A folder that ``CLIPModel``, ``CLIPTokenizerFast`` and ``CLIPProcessor`` ``from_pretrained`` open."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizerFast

    from clipl.data.transforms import OPENAI_MEAN, OPENAI_STD

    hf_cfg = to_hf_config(cfg)  # refuses unsupported towers before anything is written
    hf_sd = {k: v.contiguous() for k, v in to_hf_state_dict(state_dict).items()}
    out.mkdir(parents=True, exist_ok=False)
    hf_cfg.save_pretrained(str(out))
    save_file(hf_sd, str(out / WEIGHTS_FILES[0]), metadata={"format": "pt"})
    write_tokenizer(out, cfg.text.context_length)
    size = cfg.image.image_size
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD), do_convert_rgb=True,
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizerFast.from_pretrained(str(out))).save_pretrained(str(out))
    return out
