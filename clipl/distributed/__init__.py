"""Distributed training helpers: DeepSpeed configs and ZeRO checkpoint conversion."""

from clipl.distributed.deepspeed import (
    DeepSpeedOptions,
    deepspeed_config,
    lightning_deepspeed_config,
    optimizer_class_for,
)

__all__ = ["DeepSpeedOptions", "deepspeed_config", "lightning_deepspeed_config", "optimizer_class_for"]
