"""OpenAI's ModifiedResNet image tower: 3-conv stem, anti-aliased strided Bottlenecks, attention pool.

Differences from torchvision's ResNet (CLIP paper, §2.4): three stem convolutions and an average
pool instead of one conv and a max pool; strided blocks average-pool instead of striding their convs
(anti-aliasing); the global average pool is replaced by one QKV attention layer whose only query is
the mean of the feature map.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipl.models.layers import lock_groups, materialized, maybe_checkpoint, resolve_heads
from clipl.models.registry import register
from clipl.models.tower import FreezableBatchNorm


@dataclass
class ModifiedResNetConfig:
    """Hyperparameters of a ModifiedResNet image tower."""

    arch: str = "modified_resnet"
    """Registry key of this tower architecture."""
    image_size: int = 224
    """Input resolution (square); must be a multiple of 32 (the tower's total stride)."""
    layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    """Number of Bottleneck blocks in each of the four stages."""
    width: int = 64
    """Stem width; stage i has width * 2**i planes and the pooled feature has width * 32 channels."""
    heads: Optional[int] = None
    """Attention-pool heads; None -> width * 32 // 64 (head width 64)."""


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avgpool stride) -> 1x1 residual block with expansion 4; every conv has stride 1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            # OpenAI's key names: downsample.0 is the conv, downsample.1 the BN; "-1" is the pool.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [("-1", nn.AvgPool2d(stride)), ("0", nn.Conv2d(inplanes, out, 1, bias=False)), ("1", nn.BatchNorm2d(out))]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.act3(y + identity)


class AttentionPool2d(nn.Module):
    """One multi-head attention layer over the feature map whose single query is the mean token."""

    def __init__(self, grid: int, width: int, heads: int, output_dim: int):
        super().__init__()
        self.heads = heads
        # (grid^2 + 1) positions: the mean token first, then the grid in row-major order.
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor, pre_projection: bool = False) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        if tokens.shape[1] != self.positional_embedding.shape[0]:
            raise ValueError(
                f"feature map {h}x{w} does not match the attention pool's positional embedding "
                f"({self.positional_embedding.shape[0] - 1} positions); check image_size"
            )
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        n, dh = tokens.shape[1], c // self.heads
        q = self.q_proj(tokens[:, :1]).view(b, 1, self.heads, dh).transpose(1, 2)
        k = self.k_proj(tokens).view(b, n, self.heads, dh).transpose(1, 2)
        v = self.v_proj(tokens).view(b, n, self.heads, dh).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)  # pooled, before c_proj
        return y if pre_projection else self.c_proj(y)


class ModifiedResNet(FreezableBatchNorm, nn.Module):
    """The CLIP ResNet image tower: (B, 3, S, S) images -> (B, output_dim) features."""

    def __init__(self, layers: list[int], output_dim: int, heads: int, image_size: int = 224, width: int = 64):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers={layers} must list the block counts of exactly 4 stages")
        if image_size % 32:
            raise ValueError(f"image_size={image_size} must be a multiple of 32 for a ModifiedResNet")
        self.output_dim, self.image_size = output_dim, image_size
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            stage += [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes * 4
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self.init_parameters()

    def init_parameters(self) -> None:
        """OpenAI's init: attention-pool projections N(0, in^-0.5); bn3 gains zero (blocks start as identity)."""
        std = self.attnpool.c_proj.in_features**-0.5
        with materialized(self):
            for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
                nn.init.normal_(proj.weight, std=std)
            for stage in self.stages():
                for block in stage:
                    nn.init.zeros_(block.bn3.weight)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def _stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3]

    def forward(self, x: torch.Tensor, pre_projection: bool = False) -> torch.Tensor:
        ckpt = self.grad_checkpointing
        # The stem runs at the highest resolution: checkpointing it saves the most memory.
        x = maybe_checkpoint(ckpt, self.stem, x, scope=self._stem_modules())
        for stage in self.stages():
            for block in stage:
                x = maybe_checkpoint(ckpt, block, x)
        return maybe_checkpoint(ckpt, self.attnpool, x, pre_projection)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every stem/block/attention-pool activation in backward (saves only block inputs)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"attnpool.positional_embedding"}

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze all but the last ``unlocked_groups`` of [stem, layer1..4, attnpool]; optionally BN stats."""
        groups = [self._stem_modules(), *[[s] for s in self.stages()], [self.attnpool]]
        lock_groups(self, groups, unlocked_groups)
        if freeze_bn_stats:
            self.freeze_bn_stats()


@register("modified_resnet", config=ModifiedResNetConfig)
def build_modified_resnet(cfg: ModifiedResNetConfig, embed_dim: int) -> ModifiedResNet:
    """Build a ModifiedResNet tower projecting to ``embed_dim``."""
    heads = resolve_heads(cfg.heads, max(1, cfg.width * 32 // 64), cfg.width * 32, field="image.heads")
    return ModifiedResNet(list(cfg.layers), embed_dim, heads, image_size=cfg.image_size, width=cfg.width)
