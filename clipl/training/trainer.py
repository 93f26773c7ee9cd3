"""The Lightning Trainer from a typed config: strategy (auto/DDP/DeepSpeed ZeRO), precision, batching.

The config (clipl.training.config.TrainerConfig) is validated when it is made; build_trainer checks
what only this machine and the launcher can tell (CUDA present, the number of processes started).
"""

from __future__ import annotations

from typing import Optional, Union

from clipl.distributed.plan import BatchPlan, plan_for
from clipl.distributed.world import uses_cuda, world_size
from clipl.training.config import TrainerConfig, fraction_or_count, parse_devices
from clipl.training.strategies import build_strategy

__all__ = ["build_trainer"]


def _lightning_fraction(name: str, value: float) -> Union[int, float, None]:
    """As fraction_or_count, but the whole epoch (1.0) is Lightning's default, None: passing 1.0
    explicitly makes Lightning print a "Trainer(name=1.0) was configured so 100% ..." line per field."""
    value = fraction_or_count(name, value)
    return None if value == 1.0 and isinstance(value, float) else value


def build_trainer(
    cfg: TrainerConfig,
    *,
    out_dir: str,
    callbacks: list,
    loggers: Union[list, bool],
    plan: Optional[BatchPlan] = None,
    plugins: Optional[list] = None,
):
    """A lightning.Trainer for ``cfg`` and the run's batch ``plan`` (None: resolved from ``cfg``).

    The loader yields ``plan.per_device_batch_size`` samples per rank per optimiser step and the
    CLIPModule splits them into micro-batches, so Lightning never accumulates gradients itself.
    """
    import lightning as L

    cfg.validate()
    if cfg.strategy == "deepspeed" and not uses_cuda(cfg):
        raise ValueError(
            "trainer.strategy=deepspeed needs CUDA GPUs and none is available: Lightning's DeepSpeedStrategy "
            "refuses other accelerators. Use trainer.strategy=auto or ddp here."
        )
    if cfg.precision == "16-mixed" and not uses_cuda(cfg):
        raise ValueError("trainer.precision=16-mixed needs a CUDA GPU and none is available; use bf16-mixed")
    plan = plan_for(cfg) if plan is None else plan
    if plan.world_size != world_size(cfg):
        raise ValueError(f"the batch plan is for {plan.world_size} rank(s) but trainer.devices x trainer.num_nodes "
                         f"gives {world_size(cfg)}; resolve the plan from this config (clipl.distributed.plan.plan_for)")
    deepspeed = cfg.strategy == "deepspeed"
    from lightning.pytorch.callbacks import ModelCheckpoint

    # Checkpointing is the caller's (clipl.run's) choice: without a ModelCheckpoint among the callbacks,
    # Lightning would otherwise add its own and write a checkpoint at every epoch end.
    checkpointing = any(isinstance(cb, ModelCheckpoint) for cb in callbacks)
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=parse_devices(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg, plan),
        precision=cfg.precision,
        max_steps=cfg.max_steps,
        max_epochs=cfg.max_epochs,
        accumulate_grad_batches=1,  # the CLIPModule accumulates (see build_trainer's docstring)
        # Lightning never clips: the CLIPModule optimises manually (Lightning refuses gradient_clip_val
        # then) and clips to cfg.gradient_clip_val itself; DeepSpeed clips inside its engine
        # (gradient_clipping in its config).
        gradient_clip_val=None,
        log_every_n_steps=cfg.log_every_n_steps,
        val_check_interval=_lightning_fraction("val_check_interval", cfg.val_check_interval),
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        limit_train_batches=_lightning_fraction("limit_train_batches", cfg.limit_train_batches),
        limit_val_batches=_lightning_fraction("limit_val_batches", cfg.limit_val_batches),
        num_sanity_val_steps=cfg.num_sanity_val_steps,
        deterministic=cfg.deterministic,
        sync_batchnorm=cfg.sync_batchnorm,
        enable_progress_bar=cfg.enable_progress_bar,
        enable_model_summary=cfg.enable_model_summary,
        default_root_dir=str(out_dir),
        enable_checkpointing=checkpointing,
        callbacks=list(callbacks),
        logger=loggers,
        plugins=plugins,
    )
    expected = world_size(cfg)
    if trainer.world_size != expected:
        # e.g. torchrun/SLURM launched a different number of processes than devices x num_nodes.
        raise ValueError(
            f"the launcher started {trainer.world_size} process(es) but trainer.devices x trainer.num_nodes "
            f"gives {expected}; set trainer.devices/num_nodes to match the launcher (the batch plan is made for them)"
        )
    return trainer
