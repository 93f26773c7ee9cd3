"""OpenAI's VisionTransformer image tower: patch embedding, class token, pre-LN blocks, projection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clipl.models.layers import ACTIVATIONS, LayerNorm, Transformer, lock_groups, resolve_heads
from clipl.models.registry import register


@dataclass
class ViTConfig:
    """Hyperparameters of a CLIP vision transformer tower."""

    arch: str = "vit"
    """Registry key of this tower architecture."""
    image_size: int = 224
    """Input resolution (square); must be a multiple of patch_size."""
    patch_size: int = 32
    """Side of the square patches (the patch-embedding conv's kernel and stride)."""
    width: int = 768
    """Transformer width (token dimension)."""
    layers: int = 12
    """Number of residual attention blocks."""
    heads: Optional[int] = None
    """Attention heads; None -> width // 64 (head width 64)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of width."""
    act: str = "quick_gelu"
    """MLP activation: "quick_gelu" (OpenAI's weights) or "gelu" (any name registered in
    clipl.models.layers.ACTIVATIONS)."""
    patch_dropout: float = 0.0
    """FLIP: fraction of patch tokens dropped per image in training (a random subset from torch's
    default generator; the class token is always kept); off in eval mode. 0 = the plain ViT."""

    def __post_init__(self) -> None:
        ACTIVATIONS.get(self.act, "model.image.act")  # a registry: a recipe may register its own activation


class VisionTransformer(nn.Module):
    """(B, 3, S, S) images -> (B, output_dim): ln_post of the class token, times ``proj``."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
        patch_dropout: float = 0.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        if not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"image.patch_dropout={patch_dropout} must be in [0, 1): the fraction of patches dropped")
        self.image_size, self.patch_size, self.output_dim = image_size, patch_size, output_dim
        grid = image_size // patch_size
        self.patch_dropout = patch_dropout
        # Patches kept per image in training (the epsilon keeps e.g. 10 x (1 - 0.9) from flooring to 0).
        self.kept_patches = max(1, int(grid * grid * (1.0 - patch_dropout) + 1e-6))
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor, pre_projection: bool = False) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}")
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, grid^2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if self.patch_dropout and self.training:
            x = self._drop_patches(x)
        x = self.ln_post(self.transformer(self.ln_pre(x))[:, 0])
        return x if pre_projection else x @ self.proj

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the class token and a random ``kept_patches`` of the patch tokens of each image (FLIP).

        The subset comes from torch's default generator of x's device, so restoring that state (as
        contrastive accumulation does before recomputing a micro-batch) redraws the same subset. It is
        drawn outside the transformer blocks, so activation checkpointing never redraws it.
        """
        b, n, d = x.shape
        keep = torch.rand(b, n - 1, device=x.device).topk(self.kept_patches, dim=1, sorted=False).indices + 1
        patches = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))
        return torch.cat([x[:, :1], patches], dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"class_embedding", "positional_embedding"}

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze all but the last ``unlocked_groups`` of [embeddings, block 0..L-2, last block + ln_post, proj]."""
        blocks = list(self.transformer.resblocks)
        groups = [
            [self.conv1, self.class_embedding, self.positional_embedding, self.ln_pre],
            *[[b] for b in blocks[:-1]],
            [blocks[-1], self.ln_post],
            [self.proj],
        ]
        lock_groups(self, groups, unlocked_groups)


@register("vit", config=ViTConfig)
def build_vit(cfg: ViTConfig, embed_dim: int) -> VisionTransformer:
    """Build a vision transformer tower projecting to ``embed_dim``."""
    heads = resolve_heads(cfg.heads, max(1, cfg.width // 64), cfg.width, field="image.heads")
    return VisionTransformer(
        cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, heads, embed_dim, cfg.mlp_ratio, cfg.act,
        cfg.patch_dropout,
    )
