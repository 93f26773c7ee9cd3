"""The Lightning Trainer from a typed config: strategy (auto/DDP/DeepSpeed ZeRO), precision, batching.

Combinations are validated before anything is built, with messages naming the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from clipl.distributed.deepspeed import DeepSpeedOptions, lightning_deepspeed_config
from clipl.distributed.plan import BatchPlan, plan_for
from clipl.distributed.world import parse_devices, uses_cuda, world_size
from clipl.registry import Registry

__all__ = ["BatchPlan", "TrainerConfig", "apply_model_switches", "build_trainer", "parse_devices", "plan_for",
           "register_strategy", "world_size"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
# Lightning's short precision names -> the one full name a config stores, so `--precision bf16`
# and `--precision bf16-mixed` give the same config.yaml (and the same resume compatibility).
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


@dataclass
class TrainerConfig:
    """Hardware, strategy, precision and loop length of a run (maps onto lightning.Trainer)."""

    accelerator: str = "auto"
    """'auto', 'cpu', 'gpu' or 'cuda'."""
    devices: str = "auto"
    """Devices per node: 'auto', a count ('2'; '-1' = all GPUs) or comma-separated indices ('0,1')."""
    num_nodes: int = 1
    """Number of machines; the world size is devices x num_nodes."""
    strategy: str = "auto"
    """'auto' (Lightning picks: single device, or DDP for several), 'ddp' or 'deepspeed' (ZeRO)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """DeepSpeed only: keep optimizer states in host memory and step them with DeepSpeedCPUAdam."""
    offload_params: bool = False
    """DeepSpeed ZeRO-3 only: keep partitioned parameters in host memory."""
    deepspeed: DeepSpeedOptions = field(default_factory=DeepSpeedOptions)
    """Advanced DeepSpeed settings (bucket sizes, fp16 loss scaling)."""
    precision: str = "32-true"
    """'32-true', 'bf16-mixed', '16-mixed' (fp16 with dynamic loss scaling; CUDA only) or 'bf16-true'.
    Lightning's aliases are accepted and stored in full: '32', '16' (16-mixed), 'bf16' (bf16-mixed)."""
    max_steps: int = -1
    """Optimizer steps to train for; -1 = no limit (then max_epochs bounds the run)."""
    max_epochs: Optional[int] = None
    """Epochs to train for; None = no limit besides max_steps (Lightning: 1000 if both unset)."""
    micro_batch_size: int = 64
    """Samples one device puts through one forward/backward: what bounds activation memory. The
    global batch is made of micro-batches (see global_batch_size); `clipl config RECIPE --devices N`
    prints the resulting batch plan."""
    global_batch_size: Optional[int] = None
    """Samples per optimiser step over all ranks; None: micro_batch_size x devices x num_nodes (no
    accumulation). Otherwise it must be a multiple of micro_batch_size x devices x num_nodes, and each
    device accumulates global / (micro_batch_size x devices x num_nodes) micro-batches per step."""
    contrastive_accumulation: bool = True
    """When a step accumulates several micro-batches per device: true computes the loss over the whole
    global batch (every pair a negative of every other, as in the CLIP paper) by caching the features
    of all micro-batches first, at the cost of one extra no-grad forward per micro-batch; false is
    plain gradient accumulation: each micro-batch's loss contrasts only micro_batch_size x devices x
    num_nodes pairs and the gradients are averaged (fewer negatives, so a different, weaker objective).
    Without accumulation both are the same."""
    gradient_clip_val: Optional[float] = None
    """Clip the global gradient norm to this value; None = no clipping."""
    log_every_n_steps: int = 50
    """Logging interval in optimiser steps: training metrics are computed, read from the device (the
    step's only host synchronisation) and logged every N steps and at the last step."""
    val_check_interval: float = 1.0
    """<= 1.0: fraction of an epoch between validations; > 1: validate every that many training batches."""
    check_val_every_n_epoch: Optional[int] = 1
    """Validate every N epochs; None lets an integer val_check_interval count across epoch ends."""
    limit_train_batches: float = 1.0
    """<= 1.0: fraction of the training epoch; > 1: that many batches per epoch."""
    limit_val_batches: float = 1.0
    """<= 1.0: fraction of the validation set; > 1: that many batches."""
    num_sanity_val_steps: int = 0
    """Validation batches run before training starts (0 = none)."""
    deterministic: bool = False
    """Use deterministic algorithms (slower; some CUDA ops raise if they have no deterministic form)."""
    compile: bool = False
    """torch.compile the image and text towers (in place, so state-dict keys are unchanged)."""
    channels_last: bool = False
    """Store the image tower's weights channels-last (faster convolutions on tensor cores)."""
    sync_batchnorm: bool = False
    """Synchronise BatchNorm statistics across ranks (ResNet towers with small per-device batches)."""
    find_unused_parameters: bool = False
    """DDP: search for parameters without gradients each step (needed if some trainable ones go unused)."""
    ddp_static_graph: bool = False
    """DDP: promise the set of used parameters never changes (enables extra optimisations)."""
    ddp_bucket_cap_mb: int = 25
    """DDP: gradient all-reduce bucket size in MiB."""
    process_group_backend: Optional[str] = None
    """torch.distributed backend ('nccl', 'gloo'); None = nccl on CUDA, gloo on CPU."""
    dist_timeout_s: int = 1800
    """Seconds a collective may wait before the process group times out."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""
    enable_model_summary: bool = True
    """Print the parameter summary at the start of fit."""
    peak_tflops: Optional[float] = None
    """Peak dense TFLOP/s of one device at the run's precision, for perf/mfu; None looks the GPU up in
    clipl's table (A100, H100, H200, L40S, ...; clipl.flops.PEAK_TFLOPS). Set it for any other device,
    including CPU."""

    def __post_init__(self) -> None:
        self.precision = PRECISION_ALIASES.get(str(self.precision).strip(), str(self.precision).strip())
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field for any invalid value or combination."""
        _check(self.accelerator in ACCELERATORS, "accelerator", self.accelerator, f"one of {ACCELERATORS}")
        parse_devices(self.devices)
        _check(self.num_nodes >= 1, "num_nodes", self.num_nodes, "an integer >= 1")
        _check(self.strategy in _STRATEGIES, "strategy", self.strategy, f"one of {tuple(_STRATEGIES)}")
        _check(self.zero_stage in (1, 2, 3), "zero_stage", self.zero_stage, "1, 2 or 3")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        if self.strategy != "deepspeed":
            for name in ("offload_optimizer", "offload_params"):
                if getattr(self, name):
                    raise ValueError(f"trainer.{name}=true needs trainer.strategy=deepspeed (got {self.strategy!r})")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"trainer.offload_params=true needs trainer.zero_stage=3 (got {self.zero_stage}); "
                "only ZeRO-3 partitions parameters, so only it can offload them"
            )
        if self.strategy == "deepspeed" and self.accelerator == "cpu":
            raise ValueError(
                "trainer.strategy=deepspeed cannot run with trainer.accelerator=cpu: Lightning's DeepSpeedStrategy "
                "supports CUDA GPUs only. Use strategy=auto or ddp on CPU."
            )
        if self.precision == "16-mixed" and self.accelerator == "cpu":
            raise ValueError(
                "trainer.precision=16-mixed (fp16 AMP with loss scaling) needs a CUDA GPU; use bf16-mixed on CPU"
            )
        _check(self.max_steps == -1 or self.max_steps >= 1, "max_steps", self.max_steps, "-1 or >= 1")
        _check(self.max_epochs is None or self.max_epochs >= 1, "max_epochs", self.max_epochs, "None or >= 1")
        _check(self.micro_batch_size >= 1, "micro_batch_size", self.micro_batch_size, ">= 1")
        if self.global_batch_size is not None:
            _check(self.global_batch_size >= 1, "global_batch_size", self.global_batch_size, "None or >= 1")
        if self.gradient_clip_val is not None:
            _check(self.gradient_clip_val > 0, "gradient_clip_val", self.gradient_clip_val, "None or > 0")
        _check(self.log_every_n_steps >= 1, "log_every_n_steps", self.log_every_n_steps, ">= 1")
        for name in ("val_check_interval", "limit_train_batches", "limit_val_batches"):
            _fraction_or_count(name, getattr(self, name))
        if self.check_val_every_n_epoch is not None:
            _check(self.check_val_every_n_epoch >= 1, "check_val_every_n_epoch", self.check_val_every_n_epoch,
                   "None or >= 1")
        _check(self.num_sanity_val_steps >= -1, "num_sanity_val_steps", self.num_sanity_val_steps, ">= -1")
        _check(self.ddp_bucket_cap_mb >= 1, "ddp_bucket_cap_mb", self.ddp_bucket_cap_mb, ">= 1")
        if self.peak_tflops is not None:
            _check(self.peak_tflops > 0, "peak_tflops", self.peak_tflops, "None or > 0")
        _check(self.dist_timeout_s >= 1, "dist_timeout_s", self.dist_timeout_s, ">= 1")
        if self.process_group_backend is not None:
            _check(self.process_group_backend in ("nccl", "gloo", "mpi"), "process_group_backend",
                   self.process_group_backend, "None, 'nccl', 'gloo' or 'mpi'")


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"trainer.{name} must be {expected}, got {value!r}")


def _fraction_or_count(name: str, value: float) -> Union[int, float]:
    """Lightning's convention: a float <= 1 is a fraction, an integer > 1 a batch count."""
    if value <= 0:
        raise ValueError(f"trainer.{name} must be > 0 (a fraction <= 1.0 or a batch count > 1), got {value!r}")
    if value <= 1.0:
        return float(value)
    if value != int(value):
        raise ValueError(f"trainer.{name} above 1 counts batches and must be a whole number, got {value!r}")
    return int(value)


def _lightning_fraction(name: str, value: float) -> Union[int, float, None]:
    """As _fraction_or_count, but the whole epoch (1.0) is Lightning's default, None: passing 1.0
    explicitly makes Lightning print a "Trainer(name=1.0) was configured so 100% ..." line per field."""
    value = _fraction_or_count(name, value)
    return None if value == 1.0 and isinstance(value, float) else value


# Strategy registry: name -> builder(cfg, plan) returning a Lightning strategy (or the string Lightning
# resolves itself).
_STRATEGIES: Registry[Callable[[TrainerConfig, BatchPlan], Any]] = Registry("trainer.strategy", error=ValueError)


def register_strategy(name: str) -> Callable:
    """Register ``builder(cfg, plan)`` under ``trainer.strategy=name`` (plan: the run's BatchPlan)."""
    return _STRATEGIES.decorator(name)


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
                         f"gives {world_size(cfg)}; resolve the plan from this config (clipl.trainer.plan_for)")
    deepspeed = cfg.strategy == "deepspeed"
    from lightning.pytorch.callbacks import ModelCheckpoint

    # Checkpointing is the caller's (clipl.run's) choice: without a ModelCheckpoint among the callbacks,
    # Lightning would otherwise add its own and write a checkpoint at every epoch end.
    checkpointing = any(isinstance(cb, ModelCheckpoint) for cb in callbacks)
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=parse_devices(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=_STRATEGIES.get(cfg.strategy)(cfg, plan),
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


def apply_model_switches(model: nn.Module, cfg: TrainerConfig) -> nn.Module:
    """Apply ``channels_last`` and ``compile`` to a CLIPModel's towers, in place (keys unchanged)."""
    if not (cfg.channels_last or cfg.compile):
        return model
    if not (hasattr(model, "visual") and hasattr(model, "text_tower")):
        raise ValueError("trainer.channels_last/compile need a CLIPModel-like model with `visual` and `text_tower`")
    # text_tower is the tower object even when its parameters are hoisted to the top level (OpenAI layout).
    towers = [model.visual, model.text_tower]
    if cfg.channels_last:
        model.visual.to(memory_format=torch.channels_last)
    if cfg.compile:
        # nn.Module.compile compiles forward in place; torch.compile(module) would wrap it and prefix
        # every state-dict key with `_orig_mod.`, breaking OpenAI-layout checkpoints.
        for tower in towers:
            tower.compile()
    return model
