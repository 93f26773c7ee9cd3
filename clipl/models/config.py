"""The typed configuration of a whole CLIP model: two towers and the shared embedding space."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelConfig:
    """A CLIP model: an image tower and a text tower projecting into a shared space."""

    embed_dim: int = 512
    """Dimension of the shared image-text embedding space (the towers' output_dim)."""
    image: Any = None
    """Image tower config: any registered tower dataclass (ModifiedResNetConfig, ViTConfig, ...)."""
    text: Any = None
    """Text tower config: any registered tower dataclass (TextTransformerConfig, HFTextConfig, ...)."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log inverse temperature; CLIP uses ln(1/0.07). SigLIP uses ln(10)."""
    init_logit_bias: Optional[float] = None
    """Initial logit bias (SigLIP uses -10); None builds a model without a bias parameter."""
    grad_checkpointing: bool = False
    """Recompute tower activations in the backward pass to save memory."""
