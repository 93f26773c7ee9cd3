"""checkpoint_callbacks: every kind of checkpoint the config asks for, under its fixed name."""

from __future__ import annotations

from datetime import timedelta

import lightning as L
import torch

from clipl.checkpointing import PreemptionCheckpoint, checkpoint_callbacks, find_resume_checkpoint
from clipl.config.schema import CheckpointConfig


class Tiny(L.LightningModule):
    """Logs `score` = 10 - step, so the best (max) scores are the earliest steps."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        self.log("score", 10.0 - self.global_step)
        return (self.w - batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_default_callbacks_and_names(tmp_path):
    cbs = checkpoint_callbacks(CheckpointConfig(every_n_steps=3, keep_last=2), tmp_path)
    assert [type(c).__name__ for c in cbs] == ["ModelCheckpoint", "ModelCheckpoint", "PreemptionCheckpoint"]
    periodic, epoch = cbs[0], cbs[1]
    assert periodic.filename == "step={step:09d}" and periodic.save_top_k == 2 and periodic.monitor == "step"
    assert epoch.filename == "epoch={epoch:04d}-step={step:09d}" and epoch.save_top_k == -1
    assert all(c.dirpath == str(tmp_path / "checkpoints") for c in cbs[:2])
    assert isinstance(cbs[-1], PreemptionCheckpoint)


def test_time_and_top_k_checkpoints(tmp_path):
    cfg = CheckpointConfig(every_n_steps=4, keep_last=1, save_on_epoch_end=False, every_minutes=30.0,
                           monitor="score", monitor_mode="max", top_k=2)
    cbs = checkpoint_callbacks(cfg, tmp_path)
    timed = next(c for c in cbs if getattr(c, "filename", "").startswith("time-"))
    assert timed._train_time_interval == timedelta(minutes=30)
    # Four epochs of two steps: the metric checkpoint is judged at each epoch end (steps 2, 4, 6, 8).
    data = torch.utils.data.DataLoader(torch.randn(2, 1), batch_size=1)
    L.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=cbs).fit(Tiny(), data)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    # The two best (highest) scores are the earliest epoch ends; periodic keeps only the newest.
    assert [n for n in names if n.startswith("best-")] == ["best-step=000000002.ckpt", "best-step=000000004.ckpt"]
    assert [n for n in names if n.startswith("step=")] == ["step=000000008.ckpt"]
    assert not [n for n in names if n.startswith("time-")]  # 30 minutes never passed
    assert find_resume_checkpoint(tmp_path).name == "step=000000008.ckpt"


def test_time_checkpoint_keeps_the_newest(tmp_path):
    # An interval far below one step's duration: a save is due after every step, only the newest kept.
    cfg = CheckpointConfig(every_n_steps=100, save_on_epoch_end=False, every_minutes=1e-6)
    data = torch.utils.data.DataLoader(torch.randn(5, 1), batch_size=1)
    L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=checkpoint_callbacks(cfg, tmp_path)).fit(Tiny(), data)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert [n for n in names if n.startswith("time-")] == ["time-step=000000005.ckpt"]
