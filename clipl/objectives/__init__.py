"""Training objectives: registered loss modules taking normalised features and the temperature."""

from clipl.objectives.contrastive import ClipLoss, ClipLossConfig, effective_logit_scale
from clipl.objectives.registry import (
    ObjectiveConfig,
    build_objective,
    list_objectives,
    objective_config,
    objective_class,
    objective_config_class,
    register_objective,
)
from clipl.objectives.sigmoid import SigLipLoss, SigLipLossConfig

__all__ = [
    "ClipLoss",
    "ClipLossConfig",
    "ObjectiveConfig",
    "SigLipLoss",
    "SigLipLossConfig",
    "build_objective",
    "effective_logit_scale",
    "list_objectives",
    "objective_config",
    "objective_class",
    "objective_config_class",
    "register_objective",
]
