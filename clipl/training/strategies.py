"""Lightning strategies by name: the builders behind ``trainer.strategy`` (auto, DDP, DeepSpeed ZeRO).

The names live in clipl.training.config's STRATEGIES table (so a config is validated without this
module); each builder here is registered into it and turns a TrainerConfig and the run's BatchPlan
into what ``lightning.Trainer(strategy=...)`` takes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

from clipl.distributed.deepspeed import lightning_deepspeed_config
from clipl.distributed.plan import BatchPlan
from clipl.training.config import STRATEGIES, TrainerConfig


def register_strategy(name: str) -> Callable:
    """Register ``builder(cfg, plan)`` under ``trainer.strategy=name`` (plan: the run's BatchPlan)."""
    return STRATEGIES.decorator(name)


def build_strategy(cfg: TrainerConfig, plan: BatchPlan) -> Any:
    """The Lightning strategy (or the name Lightning resolves itself) for ``cfg.strategy``."""
    return STRATEGIES.get(cfg.strategy, "trainer.strategy")(cfg, plan)


@register_strategy("auto")
def _auto_strategy(cfg: TrainerConfig, plan: BatchPlan) -> Any:
    # One process: Lightning's single-device strategy. Several: the same DDP settings as 'ddp'.
    return _ddp_strategy(cfg, plan) if plan.world_size > 1 else "auto"


@register_strategy("ddp")
def _ddp_strategy(cfg: TrainerConfig, plan: BatchPlan) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(
        find_unused_parameters=cfg.find_unused_parameters,
        static_graph=cfg.ddp_static_graph,
        bucket_cap_mb=cfg.ddp_bucket_cap_mb,
        # Gradients alias the all-reduce buckets: saves one copy of all gradients.
        gradient_as_bucket_view=True,
        process_group_backend=cfg.process_group_backend,
        timeout=timedelta(seconds=cfg.dist_timeout_s),
    )


@register_strategy("deepspeed")
def _deepspeed_strategy(cfg: TrainerConfig, plan: BatchPlan) -> Any:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from clipl.distributed.compat import patch_deepspeed_scalar_broadcast

    # CLIP's logit_scale is a 0-dim parameter, which DeepSpeed's weight broadcasts cannot handle.
    patch_deepspeed_scalar_broadcast()
    return DeepSpeedStrategy(
        # The engine sees what Lightning feeds it: one loader batch (micro x accumulation samples) per
        # optimiser step and no accumulation of its own (Lightning sets gradient_accumulation_steps
        # from accumulate_grad_batches, always 1 here); the CLIPModule splits the batch into
        # micro-batches itself. So DeepSpeed's train_batch_size is the plan's global batch.
        config=lightning_deepspeed_config(cfg, plan.per_device_batch_size, 1),
        process_group_backend=cfg.process_group_backend,
        timeout=timedelta(seconds=cfg.dist_timeout_s),
    )
