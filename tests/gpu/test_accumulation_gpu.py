"""Contrastive accumulation through Lightning + DeepSpeed ZeRO-2 in bf16 on one GPU, and a sync-free step.

GPU only:  pytest -m gpu tests/gpu/test_accumulation_gpu.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_deepspeed_gpu import Synthetic  # noqa: E402

pytestmark = pytest.mark.gpu

GLOBAL, STEPS = 32, 3


def _fit(micro: int, tmp_path, strategy: str = "deepspeed", steps: int = STEPS, callbacks=(), log_every: int = 1,
         precision: str = "bf16-mixed", preset: str = "rn50x4"):
    from clipl.config.schema import RunConfig
    from clipl.distributed.plan import plan_for
    from clipl.models import preset as model_preset
    from clipl.module import CLIPModule
    from clipl.optim import OptimConfig
    from clipl.training.config import TrainerConfig
    from clipl.training.trainer import build_trainer

    trainer_cfg = TrainerConfig(accelerator="gpu", devices="1", strategy=strategy, zero_stage=2,
                                precision=precision, micro_batch_size=micro, global_batch_size=GLOBAL,
                                max_steps=steps, gradient_clip_val=1.0, enable_progress_bar=False,
                                enable_model_summary=False, log_every_n_steps=log_every)
    cfg = RunConfig(model=model_preset(preset), optim=OptimConfig(lr=1e-4, warmup_steps=1), trainer=trainer_cfg,
                    out_dir=str(tmp_path))
    plan = plan_for(trainer_cfg)
    torch.manual_seed(0)
    system = CLIPModule(cfg, plan=plan)
    losses = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, *args):
            losses.append(float(outputs["loss"]))

    trainer = build_trainer(trainer_cfg, plan=plan, out_dir=str(tmp_path), callbacks=[*callbacks, Losses()],
                            loggers=False)
    data = Synthetic(GLOBAL * steps, cfg.model.image.image_size, cfg.model.text.context_length)
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=plan.per_device_batch_size))
    assert trainer.global_step == steps
    return losses


def test_rn50x4_zero2_bf16_accumulated_equals_whole_batch(tmp_path):
    """k = 4 micro-batches of 8 vs one of 32: BatchNorm sees 8 vs 32 images, so the towers' outputs (and
    losses) differ a little beyond bf16 rounding; the first step's loss must agree within bf16 tolerance."""
    whole = _fit(GLOBAL, tmp_path / "whole")
    accumulated = _fit(GLOBAL // 4, tmp_path / "accumulated")
    torch.testing.assert_close(torch.tensor(accumulated), torch.tensor(whole), rtol=2e-2, atol=2e-2)


def test_no_device_sync_between_logging_steps(tmp_path):
    """torch.cuda.set_sync_debug_mode('error') raises on any synchronising call inside the training steps."""

    class SyncDebug(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            logging = (trainer.global_step + 1) % trainer.log_every_n_steps == 0 or trainer.is_last_batch
            torch.cuda.set_sync_debug_mode(0 if logging else "error")

        def on_train_batch_end(self, *args):
            torch.cuda.set_sync_debug_mode(0)

    try:
        # One device, fused AdamW, 2 micro-batches per step, logging every 4 steps.
        losses = _fit(GLOBAL // 2, tmp_path, strategy="auto", steps=8, callbacks=[SyncDebug()], log_every=4)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(losses) == 8


def test_fp16_loss_scaling_with_accumulation(tmp_path):
    """16-mixed (GradScaler: each micro-batch's backward scaled, unscaled before clipping, fused AdamW):
    vit_b32, k = 4 vs k = 1, losses within fp16 tolerance."""
    whole = _fit(GLOBAL, tmp_path / "whole", strategy="auto", precision="16-mixed", preset="vit_b32")
    accumulated = _fit(GLOBAL // 4, tmp_path / "acc", strategy="auto", precision="16-mixed", preset="vit_b32")
    torch.testing.assert_close(torch.tensor(accumulated), torch.tensor(whole), rtol=1e-2, atol=1e-2)
