"""DeepSpeed ZeRO on CPU (gloo, one process): an accumulated step equals the full-batch step.

Run as a subprocess by test_accumulation_deepspeed.py (DeepSpeed's globals stay out of pytest):
    python accum_worker.py OUT.pt PORT

For ZeRO 1/2/3 it builds two engines from the same weights, as Lightning's DeepSpeedStrategy
configures them for a batch plan (train_micro_batch_size_per_gpu = the per-device batch of 8,
gradient_accumulation_steps = 1): one trains on each batch in one micro-batch, the other splits it
into 4 micro-batches of 2 through CLIPModule.forward_backward (contrastive accumulation), telling the
engine which backward ends the step as CLIPModule._backward does (prepare_micro_backward). Both run their step inside the
engine's forward, as Lightning's manual optimisation does. After two steps each, a third one with a
NaN loss goes through the accumulated path (the engine must discard it). Everything lands in OUT.pt.
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import accum_cases as cases  # noqa: E402
import zero_worker  # noqa: E402

BATCH, MICRO = 8, 2


def _engine(stage: int, accumulation: int):
    import deepspeed

    from clipl.distributed.deepspeed import deepspeed_config
    from clipl.optim import OptimConfig, build_optimizer
    from clipl.training.config import TrainerConfig

    cfg = TrainerConfig(strategy="deepspeed", zero_stage=stage, precision="32-true", gradient_clip_val=1.0)
    module = cases.module("micro_vit", "clip", False, False, accumulation=accumulation, micro=BATCH // accumulation)
    optimizer = build_optimizer(module.model, OptimConfig(lr=1e-3, weight_decay=0.1, fused=False))
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer,
                                      config=deepspeed_config(cfg, micro_batch_size=BATCH, accumulate=1),
                                      model_parameters=[p for p in module.parameters() if p.requires_grad])
    return module, engine


def _step(module, engine, batch: dict, mask: str) -> float:
    """One optimiser step, its forwards and backwards run inside engine.forward (Lightning's redirection)."""

    from clipl.distributed.deepspeed import prepare_micro_backward

    def backward(tensor: torch.Tensor, last: bool) -> None:  # as CLIPModule._backward under Lightning
        if module.accumulation > 1:
            prepare_micro_backward(engine, last)
        engine.backward(tensor)

    module.forward = lambda: module.forward_backward(batch, backward, mask=mask)
    try:
        out = engine()
    finally:
        del module.forward
    engine.step()
    return float(out.loss)


def _weights(engine) -> dict[str, torch.Tensor]:
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: safe_get_full_fp32_param(p).float().clone() for name, p in engine.module.named_parameters()}


def run_stage(stage: int) -> dict:
    from clipl.distributed.deepspeed import drops_nonfinite_steps

    runs = {}
    for accumulation in (1, BATCH // MICRO):
        module, engine = _engine(stage, accumulation)
        mask = "nan" if drops_nonfinite_steps(engine) else "zero"
        losses = [_step(module, engine, cases.batch(BATCH, seed=seed, preset="micro_vit"), mask) for seed in range(2)]
        before = _weights(engine)
        compute_loss = module.compute_loss
        module.compute_loss = lambda out: compute_loss(out) * math.nan
        nan_loss = _step(module, engine, cases.batch(BATCH, seed=2, preset="micro_vit"), mask)
        runs[accumulation] = {"losses": losses, "weights": before, "after_nan": _weights(engine),
                              "nan_loss": nan_loss, "skipped_steps": int(engine.skipped_steps), "mask": mask}
        del module.compute_loss
    return runs


def main() -> None:
    out_path, port = sys.argv[1:3]
    zero_worker.init_cpu_deepspeed(port, patch_scalar_broadcast=True)
    torch.save({stage: run_stage(stage) for stage in (1, 2, 3)}, out_path)


if __name__ == "__main__":
    main()
