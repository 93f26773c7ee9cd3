"""DeepSpeed optimizer steps on CPU (gloo, one process): non-finite steps and CPU-offloaded AdamW.

Run as a subprocess by test_deepspeed_steps.py (DeepSpeed's globals must not leak into pytest):
    python step_worker.py OUT.pt PORT

For ZeRO 1/2/3 in fp32 and bf16 it takes two finite steps, then one step through clipl's non-finite
path (clipl.distributed.deepspeed.skip_step_loss, as CLIPModule.training_step uses it), then one
through the zeros fallback, then a finite step, recording the fp32 master weights and Adam moments
around each. It also trains ZeRO-2 and ZeRO-3 with the optimizer offloaded (DeepSpeedCPUAdam, built by
clipl.optim.build_optimizer) next to the same engine with torch's AdamW. Everything lands in OUT.pt.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import zero_worker  # noqa: E402


def _engine(stage: int, precision: str, offload: bool = False):
    import deepspeed

    from clipl.distributed.deepspeed import deepspeed_config, optimizer_class_for
    from clipl.optim import OptimConfig, build_optimizer
    from clipl.training.config import TrainerConfig

    cfg = TrainerConfig(strategy="deepspeed", zero_stage=stage, precision=precision, gradient_clip_val=1.0,
                        offload_optimizer=offload)
    ds_config = deepspeed_config(cfg, micro_batch_size=4, accumulate=1)
    torch.manual_seed(0)
    module = zero_worker.system("micro_vit")
    module.configure_model()
    optimizer = build_optimizer(module.model, OptimConfig(lr=1e-3, weight_decay=0.1, fused=False),
                                optimizer_class_for(cfg))
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config,
                                      model_parameters=[p for p in module.parameters() if p.requires_grad])
    return module, engine, type(optimizer).__name__


def _state(engine) -> dict[str, torch.Tensor]:
    """fp32 master weights of every parameter and the inner optimizer's whole state (one rank holds all).

    The inner optimizer steps DeepSpeed's flat fp32 partitions, so its state (exp_avg, exp_avg_sq,
    step) is keyed by partition, not by parameter: ``{state key}:{partition index}``.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out = {f"w:{name}": safe_get_full_fp32_param(p).float().clone() for name, p in engine.module.named_parameters()}
    for i, state in enumerate(engine.optimizer.optimizer.state.values()):
        for key, value in state.items():
            out[f"{key}:{i}"] = torch.as_tensor(value).float().clone()
    return out


def _step(module, engine, seed: int, dtype, nonfinite: bool | None = None) -> float:
    """One step; ``nonfinite``: None trains normally, True/False sends skip_step_loss(engine_drops=...)."""
    from clipl.distributed.deepspeed import skip_step_loss

    images, tokens = zero_worker.batch(module.model, seed)
    out = engine(images.to(dtype), tokens)
    if nonfinite is None:
        loss = module.compute_loss(out)
    else:
        loss = skip_step_loss((out.image_features, out.text_features), engine_drops=nonfinite)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def nonfinite_case(stage: int, precision: str) -> dict:
    from clipl.distributed.deepspeed import drops_nonfinite_steps

    module, engine, _ = _engine(stage, precision)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    for seed in range(2):
        _step(module, engine, seed, dtype)
    res = {"drops": drops_nonfinite_steps(engine), "states": [_state(engine)]}
    res["skip_loss"] = _step(module, engine, 2, dtype, nonfinite=True)
    res["skipped_steps"] = int(engine.skipped_steps)
    res["states"].append(_state(engine))
    _step(module, engine, 3, dtype, nonfinite=False)
    res["states"].append(_state(engine))
    res["finite_loss"] = _step(module, engine, 4, dtype)
    res["states"].append(_state(engine))
    return res


def offload_case(stage: int) -> dict:
    runs = {}
    for offload in (False, True):
        module, engine, opt_name = _engine(stage, "32-true", offload=offload)
        losses = [_step(module, engine, seed, torch.float32) for seed in range(4)]
        runs[offload] = {"optimizer": opt_name, "losses": losses, "state": _state(engine)}
    return runs


def main() -> None:
    out_path, port = sys.argv[1:3]
    zero_worker.init_cpu_deepspeed(port, patch_scalar_broadcast=True)
    results = {"nonfinite": {}, "offload": {}}
    for stage in (1, 2, 3):
        for precision in ("32-true", "bf16-mixed"):
            results["nonfinite"][f"{stage}/{precision}"] = nonfinite_case(stage, precision)
    for stage in (2, 3):
        results["offload"][stage] = offload_case(stage)
    torch.save(results, out_path)


if __name__ == "__main__":
    main()
