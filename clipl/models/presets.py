"""Named model presets: OpenAI's nine CLIP architectures (exact hyperparameters) and tiny CPU models.

Heads follow OpenAI's rule of a head width of 64 (ResNet pool: width*32/64; ViT and text: width/64),
which the tower configs apply when ``heads`` is None.
"""

from __future__ import annotations

from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.vit import ViTConfig
from clipl.models.config import ModelConfig
from clipl.models.registry import register_preset


def _text(width: int) -> TextTransformerConfig:
    # Every OpenAI model: 12 layers, context 77, 49408-token vocabulary.
    return TextTransformerConfig(width=width, layers=12, context_length=77, vocab_size=49408)


def _rn(embed_dim: int, image_size: int, layers: list[int], width: int, text_width: int) -> ModelConfig:
    image = ModifiedResNetConfig(image_size=image_size, layers=layers, width=width)
    return ModelConfig(embed_dim=embed_dim, image=image, text=_text(text_width))


def _vit(embed_dim: int, image_size: int, patch: int, width: int, layers: int, text_width: int) -> ModelConfig:
    image = ViTConfig(image_size=image_size, patch_size=patch, width=width, layers=layers)
    return ModelConfig(embed_dim=embed_dim, image=image, text=_text(text_width))


@register_preset("rn50")
def rn50() -> ModelConfig:
    """OpenAI RN50 (102.01M parameters)."""
    return _rn(1024, 224, [3, 4, 6, 3], 64, 512)


@register_preset("rn101")
def rn101() -> ModelConfig:
    """OpenAI RN101 (119.69M parameters)."""
    return _rn(512, 224, [3, 4, 23, 3], 64, 512)


@register_preset("rn50x4")
def rn50x4() -> ModelConfig:
    """OpenAI RN50x4 (178.30M parameters)."""
    return _rn(640, 288, [4, 6, 10, 6], 80, 640)


@register_preset("rn50x16")
def rn50x16() -> ModelConfig:
    """OpenAI RN50x16 (290.98M parameters)."""
    return _rn(768, 384, [6, 8, 18, 8], 96, 768)


@register_preset("rn50x64")
def rn50x64() -> ModelConfig:
    """OpenAI RN50x64 (623.26M parameters)."""
    return _rn(1024, 448, [3, 15, 36, 10], 128, 1024)


@register_preset("vit_b32")
def vit_b32() -> ModelConfig:
    """OpenAI ViT-B/32 (151.28M parameters)."""
    return _vit(512, 224, 32, 768, 12, 512)


@register_preset("vit_b16")
def vit_b16() -> ModelConfig:
    """OpenAI ViT-B/16 (149.62M parameters)."""
    return _vit(512, 224, 16, 768, 12, 512)


@register_preset("vit_l14")
def vit_l14() -> ModelConfig:
    """OpenAI ViT-L/14 (427.62M parameters)."""
    return _vit(768, 224, 14, 1024, 24, 768)


@register_preset("vit_l14_336")
def vit_l14_336() -> ModelConfig:
    """OpenAI ViT-L/14@336px (427.94M parameters)."""
    return _vit(768, 336, 14, 1024, 24, 768)


def _tiny_text() -> TextTransformerConfig:
    # Full BPE vocabulary so the real tokenizer works; the small width keeps the embedding at 6.3M.
    return TextTransformerConfig(context_length=32, vocab_size=49408, width=128, heads=2, layers=2)


@register_preset("tiny_vit")
def tiny_vit() -> ModelConfig:
    """A 2-layer, width-128 ViT (64 px, patch 8) with a 2-layer text tower: trains on a CPU."""
    image = ViTConfig(image_size=64, patch_size=8, width=128, layers=2, heads=2)
    return ModelConfig(embed_dim=128, image=image, text=_tiny_text())


@register_preset("tiny_rn")
def tiny_rn() -> ModelConfig:
    """A [1,1,1,1]-block, width-16 ModifiedResNet (64 px) with a 2-layer text tower: trains on a CPU."""
    image = ModifiedResNetConfig(image_size=64, layers=[1, 1, 1, 1], width=16, heads=4)
    return ModelConfig(embed_dim=128, image=image, text=_tiny_text())
