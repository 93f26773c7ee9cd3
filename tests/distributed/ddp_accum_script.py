"""Lightning DDP on 2 CPU processes, 2 micro-batches per rank per step (contrastive accumulation).

Run by test_accumulation_ddp.py as ``python ddp_accum_script.py OUT.pt``; Lightning's DDP launcher
starts the second rank by running this script again. Each rank's loader yields its half of every
global batch of accum_cases.ddp_batches(); rank 0 saves the final weights to OUT.pt.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import accum_cases as cases  # noqa: E402


def main() -> None:
    import lightning as L

    from clipl.distributed.plan import plan_for
    from clipl.training.config import TrainerConfig
    from clipl.training.trainer import build_trainer

    out = sys.argv[1]
    torch.set_num_threads(1)
    cfg = TrainerConfig(accelerator="cpu", devices="2", strategy="ddp", micro_batch_size=cases.DDP_MICRO,
                        global_batch_size=cases.DDP_GLOBAL, max_steps=cases.DDP_STEPS, gradient_clip_val=1.0,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    plan = plan_for(cfg)
    module = cases.ddp_module(plan)
    trainer = build_trainer(cfg, plan=plan, out_dir=os.path.dirname(out), callbacks=[], loggers=False)
    n = plan.per_device_batch_size
    # Item 2s + r is rank r's half of global batch s: Lightning's DistributedSampler (no shuffle) hands
    # rank r the items r, r + 2, ...
    halves = [{k: v[r * n:(r + 1) * n] for k, v in b.items()} for b in cases.ddp_batches() for r in range(2)]
    trainer.fit(module, torch.utils.data.DataLoader(halves, batch_size=None, shuffle=False))
    if trainer.global_rank == 0:
        torch.save({k: v.detach().clone() for k, v in module.model.state_dict().items()}, out)
    _ = L


if __name__ == "__main__":
    main()
