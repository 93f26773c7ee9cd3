"""CLIP's symmetric InfoNCE objective, with global-batch negatives and local rows per rank.

Why the per-rank *local* loss gives exact gradients (open_clip issue #616 is the classic mistake).
Let W ranks each hold B local pairs, B_g = W * B, and CE_i the cross-entropy of global row i:

    L_global = 1/2 * (1/B_g * sum_i CE_i2t(i) + 1/B_g * sum_j CE_t2i(j))      (one process, B_g)
    L_r      = 1/2 * (1/B   * sum_{i in r} CE_i2t(i) + 1/B * sum_{j in r} CE_t2i(j))
    => sum_r L_r = (B_g / B) * L_global = W * L_global,  and  mean_r L_r = L_global.

Backward: rank r's loss reaches every rank's features through the gather; the gather's backward
*sums* over ranks (reduce-scatter), so the features f_s of rank s receive
sum_r dL_r/df_s = W * dL_global/df_s, and the parameters of rank s's towers get W * G_s, where G_s
is rank s's share of dL_global/dtheta (sum_s G_s = dL_global/dtheta). DDP then *averages* over
ranks: 1/W * sum_s W * G_s = dL_global/dtheta, exactly. Parameters used directly in the loss
(logit_scale) get dL_r/dt on rank r and 1/W * sum_r dL_r/dt = dL_global/dt after averaging.

The mistake: with the gather but the *full* B_g x B_g loss on every rank, each rank's loss is
already L_global, the features get W * dL_global/df_s from the summing backward, and DDP's average
leaves the towers' gradients W times too large (logit_scale's stays right, so nothing looks wrong).

The loss returned on each rank is L_r; log its mean over ranks (sync_dist) to see L_global.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipl.objectives.distributed import all_gather_with_grad, check_equal_batch, world
from clipl.objectives.registry import ObjectiveConfig, register_objective


def effective_logit_scale(logit_scale: torch.Tensor, max_scale: Optional[float]) -> torch.Tensor:
    """exp(logit_scale) in fp32, bounded by ``max_scale`` inside the graph (never in place).

    Clamping the log before exp makes the gradient w.r.t. the parameter exactly 0 while it sits
    above ln(max_scale); the parameter itself is left untouched (in-place clamps are undone by
    DeepSpeed's fp32 master weights and fail on ZeRO-3 partitioned parameters).
    """
    log_scale = torch.as_tensor(logit_scale).float()
    if max_scale is not None:
        log_scale = log_scale.clamp(max=math.log(max_scale))
    return log_scale.exp()


def check_pair_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Every objective's input check: one (B, D) image and one (B, D) text feature per pair."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            "image_features and text_features must both be (B, D), got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )


@dataclass
class ClipLossConfig(ObjectiveConfig):
    """Symmetric cross-entropy over image->text and text->image logits (CLIP)."""

    name: str = "clip"
    """Registered objective name."""
    max_logit_scale: Optional[float] = 100.0
    """The paper clips the logit scale at 100 to keep training stable."""


@register_objective("clip", config=ClipLossConfig)
class ClipLoss(nn.Module):
    """``loss = ClipLoss(cfg)(image_features, text_features, logit_scale)``: a scalar fp32 tensor.

    Features are L2-normalised (B_local, D); ``logit_scale`` is the model's raw log inverse
    temperature. Under torch.distributed with W > 1 ranks, features are gathered with gradients
    and each rank computes its B_local x B_global rows only (see the module docstring).
    """

    uses_logit_bias = False
    model_init = None  # ModelConfig's defaults are CLIP's: ln(1/0.07), no bias

    def __init__(self, cfg: Optional[ClipLossConfig] = None, group=None):
        super().__init__()
        self.cfg = cfg if cfg is not None else ClipLossConfig()
        self.group = group
        """Process group whose ranks share negatives; None: the default (world) group."""

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        check_pair_features(image_features, text_features)
        # fp32 whatever the caller's precision: autocast would otherwise run the matmuls in bf16/fp16.
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            image = image_features.float()
            text = text_features.float()
            scale = effective_logit_scale(logit_scale, self.cfg.max_logit_scale)
            rank, world_size = world(self.group)
            batch = image.shape[0]
            if world_size > 1:
                if self.cfg.check_batch_sizes:
                    check_equal_batch(batch, image.device, self.group)
                all_image = all_gather_with_grad(image, self.group)
                all_text = all_gather_with_grad(text, self.group)
                # (scale * x) @ y.T scales B x D values instead of B x B_global logits.
                logits_per_image = (scale * image) @ all_text.T  # (B_local, B_global)
                logits_per_text = (scale * text) @ all_image.T
            else:
                # One process: the text->image logits are the transpose (saves a B x B x D matmul).
                logits_per_image = (scale * image) @ text.T
                logits_per_text = logits_per_image.T
            if logit_bias is not None:
                # A shared bias cannot change a softmax; adding it keeps the parameter in the graph
                # (zero gradient) so DDP does not report it as unused.
                bias = logit_bias.float()
                logits_per_image = logits_per_image + bias
                logits_per_text = logits_per_text + bias
            # Our pairs sit at global columns rank * B_local ... rank * B_local + B_local - 1.
            labels = torch.arange(batch, device=image.device) + rank * batch
            return (
                F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
            ) / 2
