"""The run configuration: one typed dataclass tree that a recipe returns and the CLI overrides.

This module only composes: every section is a dataclass in the leaf config module of the package that
owns it (clipl.models.config, clipl.data.config, clipl.training.config, ...; see clipl.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from clipl.data.config import DataConfig
from clipl.eval.config import EvalConfig
from clipl.models.config import ModelConfig, move_legacy_logit_init
from clipl.objectives import ClipLossConfig
from clipl.objectives.registry import check_model_fits
from clipl.optim import OptimConfig
from clipl.training.config import CheckpointConfig, LoggingConfig, LoopConfig, TrainerConfig


@dataclass
class RunConfig:
    """Everything one training run needs; written to <out_dir>/config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The image and text towers and the shared embedding space."""
    objective: Any = field(default_factory=ClipLossConfig)
    """The training objective: any registered objective config (ClipLossConfig, SigLipLossConfig)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training (and validation) data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Devices, strategy, precision and run length."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Experiment tracking."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing and resume."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Zero-shot, retrieval and linear-probe evaluation during training."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Guards of the training loop."""
    out_dir: str = "runs/clipl"
    """The run directory: config, checkpoints, logs and evaluation results."""
    seed: int = 0
    """Seed for model initialisation and the data order."""

    def __post_init__(self) -> None:
        check_model_fits(self.model, self.objective)

    @staticmethod
    def upgrade_legacy(data: dict) -> dict:
        """A saved config (config.yaml, a checkpoint's hyper_parameters) of an older clipl, in today's
        fields. Until 0.x the initial temperature/bias could also be set on the objective, and the model
        took the objective's pair when the objective had a bias and the model none; that pair moves to
        the model here, so old runs resume and old checkpoints rebuild the exact model they trained."""
        return move_legacy_logit_init(data)  # shared with clipl.models.sources, which reads no RunConfig
