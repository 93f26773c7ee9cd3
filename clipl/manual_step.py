"""The optimiser side of CLIPModule's manual optimisation, one strategy-aware function per hook.

CLIPModule (clipl.module) turns a loader batch into micro-batch forwards and backwards
(clipl.accumulation); what happens around them depends on the strategy and precision, and lives here:
how one micro-batch is backpropagated (gradient sync on the last only), what a non-finite step
backpropagates, how the optimiser step is taken or skipped without a host read, and gradient clipping.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn.parallel import DistributedDataParallel

from clipl.distributed.deepspeed import drops_nonfinite_steps, prepare_micro_backward


def _scaler(trainer: Any) -> Any:
    """fp16 training's GradScaler, or None."""
    return getattr(trainer.precision_plugin, "scaler", None)


def backward(module: Any, tensor: torch.Tensor, last: bool, accumulation: int) -> None:
    """Backpropagate one micro-batch of ``module``'s step; gradients are reduced across ranks on the last."""
    strategy, wrapped = module.trainer.strategy, module.trainer.model
    if isinstance(strategy, DeepSpeedStrategy):
        if accumulation > 1:
            # The engine's own accumulation is 1 (one loader batch per step): tell it which backward
            # ends the step, so ZeRO sums the micro-batches' gradients and reduces them then.
            prepare_micro_backward(wrapped, last)
        module.manual_backward(tensor)
    elif not last and isinstance(wrapped, DistributedDataParallel):
        with wrapped.no_sync():
            module.manual_backward(tensor)
    else:
        module.manual_backward(tensor)


def deepspeed_drops(engine: Any) -> bool:
    """Whether this DeepSpeed engine discards steps with non-finite gradients itself (warns if not)."""
    drops = drops_nonfinite_steps(engine)
    if not drops:
        rank_zero_warn(
            "this DeepSpeed engine does not discard steps with non-finite gradients by itself; "
            "non-finite steps backpropagate zeros instead (Adam's moments decay on those steps); "
            "upgrade DeepSpeed, or keep bf16.check_grad_overflow on, for exact skips"
        )
    return drops


def nonfinite_mask(trainer: Any, engine_drops: bool) -> str:
    """What a non-finite step backpropagates under ``trainer``'s strategy and precision (clipl.accumulation):
    ``engine_drops`` is :func:`deepspeed_drops` of the engine under DeepSpeed (ignored otherwise)."""
    if isinstance(trainer.strategy, DeepSpeedStrategy):
        # DeepSpeed always steps after backward: NaN gradients make the engine discard the step.
        return "nan" if engine_drops else "zero"
    if _scaler(trainer) is not None:
        return "nan"  # fp16 loss scaling skips steps with non-finite gradients by itself
    return "none"  # the optimiser step is skipped on the device (found_inf)


def optimizer_step(module: Any, finite: torch.Tensor) -> None:
    """Step (or, for a non-finite loss on any rank, skip) ``module``'s optimiser and LR schedule."""
    opt = module.optimizers()
    raw = opt.optimizer
    deepspeed = isinstance(module.trainer.strategy, DeepSpeedStrategy)
    if deepspeed or _scaler(module.trainer) is not None:
        opt.step()  # the gradients of a non-finite step are NaN: the engine / GradScaler skip it
    elif getattr(raw, "_step_supports_amp_scaling", False):
        # torch's fused AdamW takes GradScaler's found_inf: on 1 its kernel leaves weights, moments
        # and step counts untouched, decided on the device (no host read of the loss).
        raw.found_inf, raw.grad_scale = (~finite).to(torch.float32), None
        try:
            opt.step()
        finally:
            del raw.found_inf, raw.grad_scale
    else:
        # Other optimisers cannot skip on the device: read the flag (one host sync per step).
        # AdamW skips parameters without gradients entirely, so dropping them skips exactly.
        if not bool(finite):
            for group in raw.param_groups:
                for p in group["params"]:
                    p.grad = None
        opt.step()
    if not deepspeed:  # the engine clears its gradients itself
        opt.zero_grad(set_to_none=True)
    scheduler = module.lr_schedulers()
    if scheduler is not None:
        scheduler.step()  # per optimiser step, taken or skipped, as Lightning's automatic loop did


def clip_gradients(trainer: Any, optimizer: torch.optim.Optimizer, clip: float) -> None:
    """Clip the gradient norm to ``clip`` before the step (manual optimisation: Lightning leaves it to the
    module, and Trainer(gradient_clip_val) is refused); a no-op for 0/None and under DeepSpeed."""
    if not clip or isinstance(trainer.strategy, DeepSpeedStrategy):
        return  # DeepSpeed clips inside its engine (gradient_clipping in its config)
    scaler = _scaler(trainer)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        # Lightning leaves unscaling to a fused optimizer's step; the norm needs true gradients.
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, clip)  # foreach kernels, no host read of the norm
