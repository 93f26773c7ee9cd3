"""Image tower adapter for any timm model: ``timm.create_model(..., num_classes=0)`` + a projection.

Needs the ``timm`` extra (``pip install clipl[timm]``); timm is imported only when a tower is built.
Weights are random (``pretrained=False``): clipl never downloads from a model hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clipl.models.layers import lock_groups
from clipl.models.registry import register
from clipl.models.tower import FreezableBatchNorm, Projection, projection_layers
from clipl.registry import check_literals


@dataclass
class TimmImageConfig:
    """A timm backbone (random init) with its pooled features projected to the embedding space."""

    arch: str = "timm"
    """Registry key of this tower architecture."""
    model_name: str = "vit_base_patch16_224"
    """timm model name, as listed by ``timm.list_models()``."""
    image_size: int = 224
    """Input resolution; passed to timm as ``img_size`` for models that take it (ViTs, ...)."""
    pool: str = "avg"
    """timm ``global_pool``: "avg", "max", "token" (class token, ViTs), "avgmax", ... as the model allows."""
    proj: Projection = "linear"
    """Projection to embed_dim: "linear", "mlp" (Linear-GELU-Linear, hidden (features + embed_dim) // 2)
    or "none" (features == embed_dim)."""
    proj_bias: bool = False
    """Whether the projection layers have a bias."""
    drop: float = 0.0
    """Dropout on the pooled features before the projection."""
    drop_path: Optional[float] = None
    """Stochastic-depth rate passed to timm (``drop_path_rate``); None keeps timm's default."""

    def __post_init__(self) -> None:
        check_literals(self, "model.image")


class TimmImageTower(FreezableBatchNorm, nn.Module):
    """(B, 3, H, W) images -> (B, output_dim): the timm trunk's pooled features, projected."""

    def __init__(self, trunk: nn.Module, output_dim: int, image_size: int, proj: str, proj_bias: bool, drop: float):
        super().__init__()
        self.trunk = trunk
        self.output_dim, self.image_size = output_dim, image_size
        # head.0 is the dropout, head.1... the projection layers (state-dict keys head.1.weight, ...).
        self.head = nn.Sequential(nn.Dropout(drop),
                                  *projection_layers(trunk.num_features, output_dim, proj, proj_bias, "image.proj"))

    def forward(self, images: torch.Tensor, pre_projection: bool = False) -> torch.Tensor:
        pooled = self.trunk(images)  # timm's num_classes=0 model returns its pooled (pre-logits) features
        return pooled if pre_projection else self.head(pooled)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        try:
            self.trunk.set_grad_checkpointing(enable)
        except (AttributeError, NotImplementedError, AssertionError) as err:
            if enable:  # turning it off on a model without support is a no-op, not an error
                raise ValueError(f"timm model {type(self.trunk).__name__} does not support gradient checkpointing") from err

    def no_weight_decay(self) -> set[str]:
        # timm names the trunk's embeddings (pos_embed, cls_token, ...); some may not exist.
        names = self.trunk.no_weight_decay() if hasattr(self.trunk, "no_weight_decay") else set()
        own = {n for n, _ in self.trunk.named_parameters()}
        return {f"trunk.{n}" for n in names if n in own}

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze all but the last ``unlocked_groups`` of [timm's coarse layer groups..., projection]."""
        from timm.models import group_parameters

        params = dict(self.trunk.named_parameters())
        grouped = group_parameters(self.trunk, self.trunk.group_matcher(coarse=True))
        groups = [[params[n] for n in grouped[k]] for k in sorted(grouped)]
        groups.append([self.head])
        lock_groups(self, groups, unlocked_groups)
        if freeze_bn_stats:
            self.freeze_bn_stats()


def _create_trunk(timm, cfg: TimmImageConfig) -> nn.Module:
    kwargs = {"pretrained": False, "num_classes": 0, "global_pool": cfg.pool}
    if cfg.drop_path is not None:
        kwargs["drop_path_rate"] = cfg.drop_path
    if not timm.is_model(cfg.model_name):
        raise ValueError(f"image.model_name={cfg.model_name!r} is not a timm model (see timm.list_models())")
    try:
        return timm.create_model(cfg.model_name, img_size=cfg.image_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
    # A model without an img_size argument (CNNs) takes any resolution as is.
    return timm.create_model(cfg.model_name, **kwargs)


@register("timm", config=TimmImageConfig)
def build_timm_image(cfg: TimmImageConfig, embed_dim: int) -> TimmImageTower:
    """Build a timm trunk with random weights and a projection to ``embed_dim``."""
    try:
        import timm
    except ImportError as err:
        raise ImportError("the timm image tower needs timm: pip install 'clipl[timm]'") from err
    trunk = _create_trunk(timm, cfg)
    return TimmImageTower(trunk, embed_dim, cfg.image_size, cfg.proj, cfg.proj_bias, cfg.drop)
