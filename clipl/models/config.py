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
    """Initial log inverse temperature (the one source of it; objectives hold only their clamp): CLIP
    uses ln(1/0.07), SigLIP ln(10). ``objective=siglip`` on the command line sets SigLIP's init on a
    model left at these defaults (docs/recipes.md)."""
    init_logit_bias: Optional[float] = None
    """Initial logit bias (SigLIP uses -10); None builds a model without a bias parameter, which an
    objective that needs one (SigLIP) refuses when the config resolves."""
    grad_checkpointing: bool = False
    """Recompute tower activations in the backward pass to save memory."""
    init_from: Optional[str] = None
    """Start training from these weights: a clipl .ckpt or ZeRO folder, a `clipl export` output, an
    open_clip folder, a Hugging Face CLIPModel folder, or an OpenAI-layout state dict (see
    docs/weights.md). Loaded into the freshly built towers before training (a resumed run's
    checkpoint still wins); what was loaded is logged. A source trained at another input resolution
    fits: its positional grid is interpolated to this model's (bicubic, class token kept)."""
    init_from_strict: bool = True
    """With init_from: every weight must match this model (keys, shapes and, where the source
    records it, the architecture incl. activation and heads). False loads whatever matches by name
    and shape (e.g. one tower) and reports what was left out."""


def move_legacy_logit_init(run_data: dict) -> dict:
    """A saved run config in plain form (config.yaml, a checkpoint's hyper_parameters["config"]) with the
    initial temperature/bias of an older clipl's objective section moved to the model section.

    Until 0.x the pair could also be set on the objective, and the model took the objective's pair
    when the objective had a bias and the model none. RunConfig.upgrade_legacy applies this, and so does
    clipl.models.sources, which reads a checkpoint's model section without the RunConfig.
    """
    objective = run_data.get("objective")
    if not isinstance(objective, dict) or not {"init_logit_scale", "init_logit_bias"} & set(objective):
        return run_data
    objective = dict(objective)
    scale, bias = objective.pop("init_logit_scale", None), objective.pop("init_logit_bias", None)
    model = dict(run_data.get("model") or {})
    if bias is not None and model.get("init_logit_bias") is None:
        model.update(init_logit_bias=bias, **({} if scale is None else {"init_logit_scale": scale}))
    return {**run_data, "model": model, "objective": objective}
