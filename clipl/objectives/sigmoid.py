"""SigLIP's pairwise sigmoid objective (Zhai et al. 2023) with a ring exchange across ranks.

For a global batch of B_g pairs, with z_ij = +1 on matching pairs and -1 elsewhere:

    L_global = -1/B_g * sum_{i,j} log sigmoid(z_ij * (t * x_i . y_j + b)),   t = exp(logit_scale)

Rank r computes L_r = -1/B * sum_{i in r, all j} (...) one block of B x B logits at a time: its own
texts first (the only block with positives), then W - 1 blocks of negatives, each block's texts
passed on by its ring neighbours (both directions at once, so about W / 2 sequential hops). The
B_g x B_g matrix never exists.
mean_r L_r = L_global, and with the ring's backward sending gradients back along the ring (summing
over ranks) and DDP averaging, gradients equal those of L_global; the arithmetic is the same as for
the contrastive loss (see clipl.objectives.contrastive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipl.objectives.contrastive import check_pair_features, effective_logit_scale
from clipl.objectives.distributed import (
    bidir_shift_with_grad,
    check_equal_batch,
    ring_shift_with_grad,
    world,
)
from clipl.objectives.registry import ObjectiveConfig, register_objective


@dataclass
class SigLipLossConfig(ObjectiveConfig):
    """Sigmoid loss over all image-text pairs with a learnable bias (SigLIP)."""

    name: str = "siglip"
    """Registered objective name."""
    max_logit_scale: Optional[float] = None
    """SigLIP does not clip its temperature (trained models end above 100); set to bound it."""


def _block_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, positives: bool
) -> torch.Tensor:
    """-sum log sigmoid(z * logits) over one B x B block, with positives on the diagonal if any."""
    logits = scale * image @ text.T + bias
    if positives:
        # z = 2 * eye - 1: +1 on the diagonal, -1 elsewhere.
        signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
        return -F.logsigmoid(signs * logits).sum()
    return -F.logsigmoid(-logits).sum()


@register_objective("siglip", config=SigLipLossConfig)
class SigLipLoss(nn.Module):
    """``loss = SigLipLoss(cfg)(image_features, text_features, logit_scale, logit_bias)``, fp32.

    Features are L2-normalised (B_local, D); ``logit_scale`` is the raw log inverse temperature
    and ``logit_bias`` the learnable bias. Under torch.distributed, texts travel around the ring.
    """

    uses_logit_bias = True
    # The SigLIP paper's init (the model's parameters, set on ModelConfig): t' = ln 10 and b = -10, so
    # that the many negatives start with a small loss. objective=siglip applies it to a default model.
    model_init = {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}

    def __init__(self, cfg: Optional[SigLipLossConfig] = None, group=None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SigLipLossConfig()
        self.group = group
        """Process group whose ranks share negatives; None: the default (world) group."""

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if logit_bias is None:
            raise ValueError(
                "SigLipLoss needs a logit_bias; build the model with model.init_logit_bias set "
                "(SigLIP's init: model.init_logit_bias=-10 model.init_logit_scale=2.3026)"
            )
        check_pair_features(image_features, text_features)
        # fp32 whatever the caller's precision: autocast would otherwise run the matmuls in bf16/fp16.
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            image = image_features.float()
            text = text_features.float()
            scale = effective_logit_scale(logit_scale, self.cfg.max_logit_scale)
            bias = torch.as_tensor(logit_bias).float()
            batch = image.shape[0]
            _, world_size = world(self.group)
            total = _block_loss(image, text, scale, bias, positives=True)
            if world_size > 1:
                if self.cfg.check_batch_sizes:
                    check_equal_batch(batch, image.device, self.group)
                # Walk the ring both ways: after hop k we hold the texts of ranks rank -/+ k, so
                # (W - 1) // 2 two-way hops, plus one one-way hop when W is even, visit every rank.
                from_left = from_right = text
                two_way, one_way = divmod(world_size - 1, 2)
                for _ in range(two_way):
                    from_left, from_right = bidir_shift_with_grad(from_left, from_right, self.group)
                    total = total + _block_loss(image, from_left, scale, bias, positives=False)
                    total = total + _block_loss(image, from_right, scale, bias, positives=False)
                if one_way:
                    from_left = ring_shift_with_grad(from_left, self.group)
                    total = total + _block_loss(image, from_left, scale, bias, positives=False)
            return total / batch
