"""Checkpoint retention and last.ckpt with DeepSpeed's checkpoint folders, and background writes on a
GPU holding the weights of their own step.

GPU only:  pytest -m gpu tests/gpu/test_checkpointing_gpu.py
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from test_deepspeed_gpu import BATCH, STEPS, Synthetic, _config

pytestmark = pytest.mark.gpu


def _fit(cfg, out_dir, deepspeed: bool, extra=()):
    from clipl.module import CLIPModule
    from clipl.training.checkpointing import checkpoint_callbacks, checkpoint_io
    from clipl.training.trainer import build_trainer

    torch.manual_seed(0)
    callbacks = checkpoint_callbacks(cfg.checkpoint, out_dir) + list(extra)
    io = checkpoint_io(cfg.checkpoint, out_dir, callbacks, deepspeed=deepspeed, on_gpu=True)
    trainer = build_trainer(cfg.trainer, out_dir=str(out_dir), callbacks=callbacks, loggers=False,
                            plugins=None if io is None else [io])
    data = Synthetic(BATCH * STEPS, cfg.model.image.image_size, cfg.model.text.context_length)
    trainer.fit(CLIPModule(cfg), torch.utils.data.DataLoader(data, batch_size=BATCH))
    if hasattr(io, "wait"):
        io.wait()
    return io


def test_deepspeed_folders_are_pruned_and_last_links_the_newest(tmp_path):
    from clipl.training.checkpointing import LAST, find_resume_checkpoint, readable

    cfg = _config(2, str(tmp_path))
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, every_n_steps=1, keep_last=2)
    assert _fit(cfg, tmp_path, deepspeed=True) is None  # DeepSpeed writes its own folders, in line
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [LAST, f"step={STEPS - 1:09d}.ckpt", f"step={STEPS:09d}.ckpt"], names
    last = folder / LAST
    assert last.is_symlink() and last.is_dir() and readable(last)
    assert find_resume_checkpoint(tmp_path) == folder / f"step={STEPS:09d}.ckpt"


def test_background_writes_on_gpu_hold_their_steps_weights(tmp_path):
    import lightning as L

    from clipl.training.checkpointing import BackgroundCheckpointIO

    snapshots = {}

    class Snapshot(L.Callback):
        # Lightning runs checkpoint callbacks last: these are the weights the save of this step copies.
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots[trainer.global_step] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    cfg = _config(2, str(tmp_path))
    cfg.trainer = dataclasses.replace(cfg.trainer, strategy="auto")
    # async_save=None: background writes, because the run is on a GPU
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, every_n_steps=1, keep_last=-1, save_on_epoch_end=False)
    assert isinstance(_fit(cfg, tmp_path, deepspeed=False, extra=[Snapshot()]), BackgroundCheckpointIO)
    for step in range(1, STEPS + 1):
        saved = torch.load(tmp_path / "checkpoints" / f"step={step:09d}.ckpt", weights_only=True)["state_dict"]
        for name, want in snapshots[step].items():
            torch.testing.assert_close(saved[name], want, rtol=0, atol=0, msg=f"step {step}: {name}")
