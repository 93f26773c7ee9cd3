"""DeepSpeed ZeRO configuration built from the typed TrainerConfig.

DeepSpeed is an optional extra: nothing here imports it until an optimizer class is asked for, so the
config can be built and tested as plain data on any machine.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from clipl.training.config import TrainerConfig


def deepspeed_config(cfg: TrainerConfig, micro_batch_size: int, accumulate: int) -> dict[str, Any]:
    """A complete DeepSpeed config dict for ``cfg`` (as for ``deepspeed.initialize``).

    ``train_micro_batch_size_per_gpu`` is always explicit: Lightning cannot infer it from iterable
    loaders (Lightning issue #19460) and would silently fall back to 1.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if accumulate < 1:
        raise ValueError(f"accumulate (gradient accumulation steps) must be >= 1, got {accumulate}")
    opts = cfg.deepspeed
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "overlap_comm": opts.overlap_comm,
        "contiguous_gradients": opts.contiguous_gradients,
        "reduce_bucket_size": opts.reduce_bucket_size,
    }
    if cfg.zero_stage < 3:
        zero.update(
            allgather_partitions=True,
            allgather_bucket_size=opts.allgather_bucket_size,
            reduce_scatter=True,
        )
    else:
        zero.update(
            stage3_prefetch_bucket_size=opts.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=opts.stage3_param_persistence_threshold,
            stage3_max_live_parameters=opts.stage3_max_live_parameters,
            # Checkpoints stay sharded; clipl.distributed.convert consolidates them offline in fp32.
            stage3_gather_16bit_weights_on_model_save=False,
        )
    if cfg.offload_optimizer:
        # Pinned host memory makes the per-step host<->device copies of gradients/weights asynchronous.
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.offload_params:  # TrainerConfig refuses it below ZeRO-3
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(accumulate),
        # 0.0 disables clipping in DeepSpeed; it clips the global norm over all partitions.
        "gradient_clipping": float(cfg.gradient_clip_val or 0.0),
        # clipl passes its own AdamW (or DeepSpeedCPUAdam); DeepSpeed otherwise refuses non-DS optimizers.
        "zero_allow_untested_optimizer": True,
        "zero_optimization": zero,
        "steps_per_print": opts.steps_per_print,
        "wall_clock_breakdown": False,
    }
    if cfg.precision in ("bf16-mixed", "bf16-true"):
        # DeepSpeed keeps fp32 master weights in the (partitioned) optimizer state for bf16.
        config["bf16"] = {"enabled": True}
    elif cfg.precision == "16-mixed":
        config["fp16"] = {
            "enabled": True,
            "loss_scale": 0,  # 0 selects dynamic loss scaling
            "initial_scale_power": opts.initial_scale_power,
            "loss_scale_window": opts.loss_scale_window,
            "hysteresis": opts.hysteresis,
            "min_loss_scale": opts.min_loss_scale,
        }
    elif cfg.precision != "32-true":
        raise ValueError(f"trainer.precision {cfg.precision!r} has no DeepSpeed mapping")
    return config


def lightning_deepspeed_config(cfg: TrainerConfig, micro_batch_size: int, accumulate: int) -> dict[str, Any]:
    """The config for Lightning's DeepSpeedStrategy: as :func:`deepspeed_config`, minus the keys Lightning owns.

    Lightning writes ``gradient_accumulation_steps`` from ``Trainer(accumulate_grad_batches)`` and
    raises if the config already has it; build_trainer passes the same ``accumulate`` there.
    """
    config = deepspeed_config(cfg, micro_batch_size, accumulate)
    del config["gradient_accumulation_steps"]
    return config


def optimizer_class_for(cfg: TrainerConfig) -> type[torch.optim.Optimizer]:
    """The AdamW implementation to use: DeepSpeedCPUAdam (AdamW mode) when the optimizer is offloaded.

    DeepSpeedCPUAdam takes lr, betas, eps, weight_decay and param groups like torch's AdamW, but not
    ``fused``/``foreach``: pass those only to torch.optim.AdamW.
    """
    if cfg.strategy == "deepspeed" and cfg.offload_optimizer:
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "trainer.offload_optimizer=true needs DeepSpeed: pip install 'clipl[deepspeed]'"
            ) from e
        return DeepSpeedCPUAdam
    return torch.optim.AdamW


def drops_nonfinite_steps(engine: Any) -> bool:
    """Whether ``engine``'s ZeRO optimizer discards a step whose gradients are not finite, by itself.

    Such an optimizer checks the global gradient norm before stepping and, when it is inf/NaN, clears
    the gradients and returns without touching weights or Adam moments (``engine.skipped_steps`` counts
    it). The check is feature-detected on the optimizer object rather than read off a version number:
    fp16 loss scaling always does it; ZeRO-1/2 do it when they compute the norm (their default) and,
    in bf16, when ``bf16.check_grad_overflow`` is on (its default since it was added); ZeRO-3 does it
    where its step separates the norm check from the loss-scale update.
    """
    opt = getattr(engine, "optimizer", None)
    if opt is None or not hasattr(opt, "overflow"):
        return False
    if engine.fp16_enabled():
        return True
    stage = engine.zero_optimization_stage()
    if stage in (1, 2):
        if not getattr(opt, "compute_grad_norm", False):
            return False
        return not engine.bfloat16_enabled() or bool(getattr(opt, "check_grad_overflow", False))
    if stage == 3:
        return hasattr(opt, "_loss_scale_update_and_overflow_cleanup")
    return False


def skip_step_loss(features: Sequence[torch.Tensor], engine_drops: bool) -> torch.Tensor:
    """What to backpropagate under DeepSpeed for a step whose loss was not finite on some rank.

    DeepSpeed always calls its optimizer's step after backward, so a step cannot be skipped by
    returning no loss. When the engine drops non-finite steps (:func:`drops_nonfinite_steps`) every
    gradient is made NaN, so it discards the step: weights and Adam moments stay exactly as they were
    (the learning-rate schedule still advances, as on the other strategies). Otherwise exact zeros flow
    back: Adam's moments decay by one step, and a tower whose own activations overflowed still yields
    NaN gradients (0 x inf), which only the engine's own discard can keep from the weights.
    """
    if engine_drops:
        # NaN x 0 is NaN in the backward too, so every parameter the features depend on gets NaN.
        return sum((t * 0).sum() for t in features) * float("nan")
    # nan_to_num first: 0 x inf would be NaN even on the zeros path.
    return sum((t.nan_to_num(0.0) * 0).sum() for t in features)


def prepare_micro_backward(engine: Any, last: bool) -> None:
    """Ready ``engine`` for one of several backward passes that follow a single engine forward.

    Contrastive accumulation runs every micro-batch's forward and backward inside one optimiser step
    (under Lightning, inside one call of the engine's forward), with the engine's own accumulation at 1.
    Two things DeepSpeed otherwise derives from its forward calls are set here: whether this backward
    ends the step (reduce and partition then, sum before), and the per-backward bookkeeping the engine
    resets at each forward; without the latter ZeRO-3 overwrites, instead of summing, the gradients of
    earlier micro-batches (its accumulate-or-copy switch advances only there).
    """
    engine.set_gradient_accumulation_boundary(last)
    clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
    if clear is not None:  # ZeRO optimizers; a no-op before the step's first backward
        clear()
