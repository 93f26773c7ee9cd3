"""The run loop's own config sections: trainer (with trainer.deepspeed), logging, checkpoint, loop.

A leaf (clipl.config's rule): it imports only the standard library and clipl.registry, never the code
that consumes these sections (clipl.training.trainer/strategies/tracking/checkpointing,
clipl.distributed), so those modules, and clipl.config.schema which composes the RunConfig, can all
import it without a circle. Enum-like strings are checked in ``__post_init__`` with the field, the bad
value, every choice and the close matches named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

from clipl.registry import Registry, check_literals, check_one_of

Accelerator = Literal["auto", "cpu", "gpu", "cuda"]
ProcessGroupBackend = Literal["nccl", "gloo", "mpi"]
ZeroStage = Literal[1, 2, 3]
LoggingBackend = Literal["wandb", "csv", "tensorboard", "none"]
MonitorMode = Literal["max", "min"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
# Lightning's short precision names -> the one full name a config stores, so `--precision bf16`
# and `--precision bf16-mixed` give the same config.yaml (and the same resume compatibility).
# (precision stays a `str`, not a Literal: OmegaConf would refuse the aliases before they are mapped.)
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}

# trainer.strategy name -> builder(cfg, plan) returning a Lightning strategy. The names are config
# knowledge, the builders trainer knowledge: clipl.training.strategies registers the built-in ones
# (and a recipe its own, with register_strategy) here, so the config is validated without importing
# the code that builds strategies. (A `str`, not a Literal, so that registered names are accepted.)
BUILTIN_STRATEGIES = ("auto", "ddp", "deepspeed")
STRATEGIES: Registry[Callable[[Any, Any], Any]] = Registry("trainer.strategy", error=ValueError)


def strategy_names() -> list[str]:
    """Every name trainer.strategy accepts: the built-in ones and those registered since."""
    return list(BUILTIN_STRATEGIES) + [n for n in STRATEGIES.names() if n not in BUILTIN_STRATEGIES]


def parse_devices(devices: Union[str, int, list]) -> Union[str, int, list[int]]:
    """'auto' -> 'auto'; '2' or 2 -> 2; '-1' -> -1 (all); '0,1' or [0, 1] -> [0, 1]."""
    if isinstance(devices, bool):
        raise ValueError(f"trainer.devices must be 'auto', a count or indices like '0,1', got {devices!r}")
    if isinstance(devices, int):
        value: Union[str, int, list[int]] = devices
    elif isinstance(devices, (list, tuple)):
        value = [int(d) for d in devices]
    else:
        text = str(devices).strip()
        try:
            if text == "auto":
                value = "auto"
            elif "," in text:
                value = [int(d) for d in text.split(",") if d.strip()]
            else:
                value = int(text)
        except ValueError:
            raise ValueError(
                f"trainer.devices must be 'auto', a count ('2', '-1' = all) or indices like '0,1', got {devices!r}"
            ) from None
    if isinstance(value, int) and (value == 0 or value < -1):
        raise ValueError(f"trainer.devices must be >= 1 or -1 (all), got {devices!r}")
    if isinstance(value, list) and (not value or min(value) < 0 or len(set(value)) != len(value)):
        raise ValueError(f"trainer.devices indices must be distinct and >= 0, got {devices!r}")
    return value


def fraction_or_count(name: str, value: float) -> Union[int, float]:
    """Lightning's convention: a float <= 1 is a fraction, an integer > 1 a batch count."""
    if value <= 0:
        raise ValueError(f"trainer.{name} must be > 0 (a fraction <= 1.0 or a batch count > 1), got {value!r}")
    if value <= 1.0:
        return float(value)
    if value != int(value):
        raise ValueError(f"trainer.{name} above 1 counts batches and must be a whole number, got {value!r}")
    return int(value)


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass
class DeepSpeedOptions:
    """Advanced DeepSpeed knobs; the common ones (stage, offload) live on TrainerConfig."""

    reduce_bucket_size: int = 200_000_000
    """Elements reduced per gradient bucket (ZeRO 1-3); larger buckets overlap better, cost memory."""
    allgather_bucket_size: int = 200_000_000
    """Elements all-gathered per parameter bucket after the step (ZeRO 1-2)."""
    overlap_comm: bool = True
    """Overlap gradient reduction with the backward pass."""
    contiguous_gradients: bool = True
    """Copy gradients into one contiguous buffer as they are produced (avoids fragmentation)."""
    stage3_prefetch_bucket_size: int = 50_000_000
    """ZeRO-3: elements of parameters prefetched ahead of use."""
    stage3_param_persistence_threshold: int = 100_000
    """ZeRO-3: parameters smaller than this stay unpartitioned (norms, biases: cheap, avoids latency)."""
    stage3_max_live_parameters: int = 1_000_000_000
    """ZeRO-3: most gathered parameter elements alive at once on a GPU."""
    initial_scale_power: int = 16
    """16-mixed: the dynamic loss scale starts at 2**initial_scale_power."""
    loss_scale_window: int = 1000
    """16-mixed: steps without overflow before the loss scale is raised."""
    hysteresis: int = 2
    """16-mixed: overflows tolerated before the loss scale is lowered."""
    min_loss_scale: float = 1.0
    """16-mixed: the loss scale never drops below this."""
    steps_per_print: int = 1_000_000_000
    """DeepSpeed's own progress print interval; effectively off, Lightning's loggers report instead."""


@dataclass
class TrainerConfig:
    """Hardware, strategy, precision and loop length of a run (maps onto lightning.Trainer)."""

    accelerator: Accelerator = "auto"
    """'auto', 'cpu', 'gpu' or 'cuda'."""
    devices: str = "auto"
    """Devices per node: 'auto', a count ('2'; '-1' = all GPUs) or comma-separated indices ('0,1')."""
    num_nodes: int = 1
    """Number of machines; the world size is devices x num_nodes."""
    strategy: str = "auto"
    """'auto' (Lightning picks: single device, or DDP for several), 'ddp' or 'deepspeed' (ZeRO)."""
    zero_stage: ZeroStage = 2
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
    process_group_backend: Optional[ProcessGroupBackend] = None
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
        check_literals(self, "trainer")  # accelerator, zero_stage, process_group_backend
        parse_devices(self.devices)
        _check(self.num_nodes >= 1, "trainer.num_nodes", self.num_nodes, "an integer >= 1")
        check_one_of("trainer.strategy", self.strategy, strategy_names())
        check_one_of("trainer.precision", self.precision, PRECISIONS)
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
        _check(self.max_steps == -1 or self.max_steps >= 1, "trainer.max_steps", self.max_steps, "-1 or >= 1")
        _check(self.max_epochs is None or self.max_epochs >= 1, "trainer.max_epochs", self.max_epochs, "None or >= 1")
        _check(self.micro_batch_size >= 1, "trainer.micro_batch_size", self.micro_batch_size, ">= 1")
        for name in ("global_batch_size", "check_val_every_n_epoch"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"trainer.{name}", value, "None or >= 1")
        for name in ("gradient_clip_val", "peak_tflops"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"trainer.{name}", value, "None or > 0")
        for name in ("log_every_n_steps", "ddp_bucket_cap_mb", "dist_timeout_s"):
            _check(getattr(self, name) >= 1, f"trainer.{name}", getattr(self, name), ">= 1")
        for name in ("val_check_interval", "limit_train_batches", "limit_val_batches"):
            fraction_or_count(name, getattr(self, name))
        _check(self.num_sanity_val_steps >= -1, "trainer.num_sanity_val_steps", self.num_sanity_val_steps, ">= -1")


@dataclass
class LoggingConfig:
    """Experiment tracking."""

    backend: LoggingBackend = "wandb"
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

    def __post_init__(self) -> None:
        check_literals(self, "logging")  # backend


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
    monitor_mode: MonitorMode = "max"
    """'max' or 'min': which values of ``monitor`` are best."""
    top_k: int = 1
    """How many best-by-``monitor`` checkpoints to keep (on top of ``keep_last``); -1 keeps all."""
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

    def __post_init__(self) -> None:
        _check(self.every_n_steps >= 1, "checkpoint.every_n_steps", self.every_n_steps, ">= 1")
        _check(self.keep_last == -1 or self.keep_last >= 1, "checkpoint.keep_last", self.keep_last,
               "-1 (keep all) or >= 1")
        _check(self.every_minutes is None or self.every_minutes > 0, "checkpoint.every_minutes", self.every_minutes,
               "None or > 0")
        check_literals(self, "checkpoint")  # monitor_mode
        _check(self.top_k == -1 or self.top_k >= 1, "checkpoint.top_k", self.top_k, "-1 (keep all) or >= 1")
        # 'auto', 'never' or a path; whether the path exists is clipl.config.validate's (it reads the disk).
        _check(bool(str(self.resume).strip()), "checkpoint.resume", self.resume, "'auto', 'never' or a checkpoint path")


@dataclass
class LoopConfig:
    """Guards of the training loop."""

    max_nonfinite_steps: int = 20
    """Abort after this many consecutive non-finite losses (each one is skipped on every rank)."""

    def __post_init__(self) -> None:
        _check(self.max_nonfinite_steps >= 1, "loop.max_nonfinite_steps", self.max_nonfinite_steps, ">= 1")
