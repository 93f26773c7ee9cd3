"""Distributed training helpers: DeepSpeed configs, a DeepSpeed scalar-parameter fix, ZeRO conversion."""

from clipl.distributed.compat import patch_deepspeed_scalar_broadcast
from clipl.distributed.convert import convert_zero_checkpoint
from clipl.distributed.deepspeed import (
    deepspeed_config,
    drops_nonfinite_steps,
    lightning_deepspeed_config,
    optimizer_class_for,
    skip_step_loss,
)
from clipl.training.config import DeepSpeedOptions  # the trainer.deepspeed section (a config leaf)

__all__ = [
    "DeepSpeedOptions",
    "convert_zero_checkpoint",
    "deepspeed_config",
    "drops_nonfinite_steps",
    "lightning_deepspeed_config",
    "optimizer_class_for",
    "patch_deepspeed_scalar_broadcast",
    "skip_step_loss",
]
