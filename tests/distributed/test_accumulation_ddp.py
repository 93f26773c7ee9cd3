"""Contrastive accumulation across 2 gloo processes (features gathered across ranks as in training).

ViT towers: 2 ranks x 2 micro-batches of 2 give the loss and the gradients of one step on the whole
batch of 8 (gradients averaged over ranks, as DDP does). ResNet towers (BatchNorm normalises over
what one forward sees): 1 process accumulating 2 micro-batches equals 2 processes with 1 each.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parents[1]))
import accum_cases as cases  # noqa: E402

WORLD = 2
VIT_CASES = [(objective, ckpt, dropout) for objective in cases.OBJECTIVES for ckpt in (False, True)
             for dropout in (False, True)]


def _averaged(result: dict) -> dict:
    """Loss and gradients averaged over ranks (what DDP / the logged global loss do)."""
    loss = result["loss"].clone()
    dist.all_reduce(loss)
    grads = {}
    for name, g in result["grads"].items():
        g = g.clone()
        dist.all_reduce(g)
        grads[name] = g / WORLD
    return {"loss": loss / WORLD, "grads": grads}


def _worker(rank: int, init_file: str, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    vit = cases.batch(8, seed=1, preset="micro_vit")
    local = {k: v[rank * 4:(rank + 1) * 4] for k, v in vit.items()}
    for objective, ckpt, dropout in VIT_CASES:
        m = cases.module("micro_vit", objective, ckpt, dropout, accumulation=2, micro=2, world_size=WORLD)
        accumulated = _averaged(cases.step(m, local, rng_seed=100 + rank))
        ref = None
        if dropout:  # the same masks, drawn micro-batch by micro-batch with every graph kept
            ref = cases.module("micro_vit", objective, ckpt, dropout, accumulation=1, micro=4, world_size=WORLD)
            ref = _averaged(cases.keep_graph_step(ref, local, accumulation=2, rng_seed=100 + rank))
        results["vit", objective, ckpt, dropout] = (accumulated, ref)
    rn = cases.batch(8, seed=2, preset="tiny_rn")
    m = cases.module("tiny_rn", "clip", False, False, accumulation=1, micro=4, world_size=WORLD)
    results["rn"] = _averaged(cases.step(m, {k: v[rank * 4:(rank + 1) * 4] for k, v in rn.items()}))
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes building 10 models: ~20 s quiet, 80 s on a loaded 2-core machine
def test_two_processes_accumulating_equal_the_whole_batch():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), out), nprocs=WORLD, join=True)
        results = torch.load(out, weights_only=True)
    vit = cases.batch(8, seed=1, preset="micro_vit")
    for objective, ckpt, dropout in VIT_CASES:
        accumulated, ref = results["vit", objective, ckpt, dropout]
        if ref is None:  # no randomness: one process, one forward over all 8 pairs
            ref = cases.step(cases.module("micro_vit", objective, ckpt, dropout, accumulation=1, micro=8), vit)
        cases.assert_same_step(accumulated, ref, f"2 ranks {objective} ckpt={ckpt} dropout={dropout}")
    # ResNet: 2 micro-batches accumulated in one process == one micro-batch on each of 2 processes.
    rn = cases.batch(8, seed=2, preset="tiny_rn")
    one = cases.step(cases.module("tiny_rn", "clip", False, False, accumulation=2, micro=4), rn)
    cases.assert_same_step(one, results["rn"], "resnet: 1 process x 2 micro-batches vs 2 processes")
    # ... and neither equals one forward over the whole batch (BatchNorm statistics over 8, not 4).
    whole = cases.step(cases.module("tiny_rn", "clip", False, False, accumulation=1, micro=8), rn)
    assert cases.max_grad_diff(one, whole) > 1e-4


@pytest.mark.slow  # Lightning's DDP launcher starts a second process: ~30 s quiet, a minute or more loaded
def test_lightning_ddp_accumulation_equals_one_process_whole_batch(tmp_path):
    """Through Trainer.fit with DDP (manual_backward, no_sync on all but the last micro-batch, the
    device-side skip flag, clipping): 2 ranks x 2 micro-batches of 4 == 1 process x 1 micro-batch of 16."""
    import subprocess

    import lightning as L

    from clipl.distributed.plan import plan_for
    from clipl.training.config import TrainerConfig
    from clipl.training.trainer import build_trainer

    out = tmp_path / "ddp.pt"
    script = Path(__file__).parent / "ddp_accum_script.py"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    ddp = torch.load(out, weights_only=True)

    cfg = TrainerConfig(accelerator="cpu", devices="1", micro_batch_size=cases.DDP_GLOBAL,
                        global_batch_size=cases.DDP_GLOBAL, max_steps=cases.DDP_STEPS, gradient_clip_val=1.0,
                        enable_progress_bar=False, enable_model_summary=False)
    plan = plan_for(cfg)
    module = cases.ddp_module(plan)
    initial = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    trainer = build_trainer(cfg, plan=plan, out_dir=str(tmp_path), callbacks=[], loggers=False)
    trainer.fit(module, torch.utils.data.DataLoader(cases.ddp_batches(), batch_size=None))
    whole = module.model.state_dict()
    assert max(float((whole[k] - initial[k]).abs().max()) for k in whole) > 1e-4
    for name, want in whole.items():
        torch.testing.assert_close(ddp[name], want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    _ = L
