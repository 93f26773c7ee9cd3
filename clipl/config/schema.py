"""The run configuration: one typed dataclass tree that a recipe returns and the CLI overrides.

Each area owns its section's dataclass (model, objective, data, optim, trainer, eval); the sections
that belong to the run itself (logging, checkpointing, the training loop's guards) live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from clipl.data.config import DataConfig
from clipl.eval.config import EvalConfig
from clipl.models.config import ModelConfig
from clipl.objectives import ClipLossConfig
from clipl.objectives.registry import check_model_fits
from clipl.optim import OptimConfig
from clipl.trainer import TrainerConfig


@dataclass
class LoggingConfig:
    """Experiment tracking."""

    backend: str = "wandb"
    """'wandb' (offline when there is no API key or no reachable server), 'csv', 'tensorboard' or 'none'."""
    project: str = "clipl"
    """W&B project."""
    name: Optional[str] = None
    """Run name shown in W&B; None uses the run directory's name."""
    group: Optional[str] = None
    """W&B group (e.g. a sweep or an ablation family)."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""
    notes: Optional[str] = None
    """Free-text W&B notes."""
    entity: Optional[str] = None
    """W&B entity (team or user); None uses the account default."""
    offline: bool = False
    """Force W&B offline mode even when a key and a server are available."""


@dataclass
class CheckpointConfig:
    """Checkpoints in <out_dir>/checkpoints and how runs resume from them."""

    every_n_steps: int = 1000
    """Save a checkpoint (step=*.ckpt) every N optimiser steps, and at the end of the run."""
    keep_last: int = 2
    """Retention, over every kind of checkpoint (step, epoch-end, time, pre-emption, Lightning's
    SLURM hpc_ckpt_*): after each save only the newest ``keep_last`` are kept (two of the same step
    count once) and older ones are deleted; best-*.ckpt are kept by ``top_k`` instead. The folder so
    holds at most keep_last + top_k checkpoints plus ``last.ckpt``, a link to the newest. -1 keeps all."""
    save_on_epoch_end: bool = True
    """Also save a checkpoint (epoch=*-step=*.ckpt) at the end of each epoch (subject to ``keep_last``)."""
    every_minutes: Optional[float] = None
    """Also save a checkpoint every this many minutes of training (time-*.ckpt, subject to
    ``keep_last``); None: off."""
    monitor: Optional[str] = None
    """A logged metric (e.g. val/zeroshot/imagenet/top1) whose best ``top_k`` checkpoints are kept
    as best-*.ckpt; None: off."""
    monitor_mode: str = "max"
    """'max' or 'min': which values of ``monitor`` are best."""
    top_k: int = 1
    """How many best-by-``monitor`` checkpoints to keep (on top of ``keep_last``)."""
    async_save: Optional[bool] = None
    """Write checkpoints in a background thread (the weights are copied first, so training goes on
    while the file is written); every write is finished before the run exits. None: on when training
    on GPUs (the host is otherwise idle), off on CPU, where the writing thread competes with training
    for the same cores (measured 13-15% fewer samples/s with a save every 2 steps on 2 cores). Not
    used under DeepSpeed, which writes its own checkpoint folders synchronously."""
    allow_config_change: bool = False
    """Resume even when the model or objective config differs from the run directory's config.yaml
    (other sections, such as trainer.max_steps or logging, may always change)."""
    resume: str = "auto"
    """'auto': resume from the newest readable checkpoint in the run directory if there is one;
    'never': refuse to start in a run directory that already holds checkpoints; or a checkpoint path."""


@dataclass
class LoopConfig:
    """Guards of the training loop."""

    max_nonfinite_steps: int = 20
    """Abort after this many consecutive non-finite losses (each one is skipped on every rank)."""


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
        objective = data.get("objective")
        if not isinstance(objective, dict) or not {"init_logit_scale", "init_logit_bias"} & set(objective):
            return data
        objective = dict(objective)
        scale, bias = objective.pop("init_logit_scale", None), objective.pop("init_logit_bias", None)
        model = dict(data.get("model") or {})
        if bias is not None and model.get("init_logit_bias") is None:
            model.update(init_logit_bias=bias, **({} if scale is None else {"init_logit_scale": scale}))
        return {**data, "model": model, "objective": objective}
