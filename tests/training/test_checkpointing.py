"""checkpoint_callbacks: every kind of checkpoint the config asks for, under its fixed name, one
retention policy over all of them, last.ckpt, and writes in a background thread."""

from __future__ import annotations

import warnings
from datetime import timedelta

import lightning as L
import pytest
import torch

from clipl.training.checkpointing import (
    LAST,
    AtomicCheckpointIO,
    BackgroundCheckpointIO,
    PreemptionCheckpoint,
    checkpoint_callbacks,
    checkpoint_io,
    find_resume_checkpoint,
)
from clipl.training.config import CheckpointConfig


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
    assert [type(c).__name__ for c in cbs] == ["_Saver", "_Saver", "PreemptionCheckpoint"]
    periodic, epoch = cbs[0], cbs[1]
    # Each saver keeps everything it writes; the shared retention policy deletes.
    assert periodic.filename == "step={step:09d}" and periodic.save_top_k == -1
    assert epoch.filename == "epoch={epoch:04d}-step={step:09d}" and epoch.save_top_k == -1
    assert periodic.retention is epoch.retention is cbs[-1].retention and periodic.retention.keep_last == 2
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
    # The two best (highest) scores are the earliest epoch ends; keep_last=1 keeps only the newest other.
    assert [n for n in names if n.startswith("best-")] == ["best-step=000000002.ckpt", "best-step=000000004.ckpt"]
    assert [n for n in names if n.startswith("step=")] == ["step=000000008.ckpt"]
    assert len(names) == 4 and (tmp_path / "checkpoints" / LAST).resolve().name == "step=000000008.ckpt"
    assert not [n for n in names if n.startswith("time-")]  # 30 minutes never passed
    assert find_resume_checkpoint(tmp_path).name == "step=000000008.ckpt"


def test_time_checkpoint_keeps_the_newest(tmp_path):
    # An interval far below one step's duration: a save is due after every step, only the newest kept.
    cfg = CheckpointConfig(every_n_steps=100, keep_last=1, save_on_epoch_end=False, every_minutes=1e-6)
    data = torch.utils.data.DataLoader(torch.randn(5, 1), batch_size=1)
    L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=checkpoint_callbacks(cfg, tmp_path)).fit(Tiny(), data)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    # The run ends at step 5, already saved by the timer: no extra end-of-run step=5 copy.
    assert names == ["last.ckpt", "time-step=000000005.ckpt"]


def _fit(tmp_path, cfg, steps, epoch_len=4, io=True):
    cbs = checkpoint_callbacks(cfg, tmp_path)
    plugin = checkpoint_io(cfg, tmp_path, cbs, deepspeed=False) if io else None
    data = torch.utils.data.DataLoader(torch.arange(epoch_len, dtype=torch.float32)[:, None], batch_size=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=cbs, plugins=[plugin] if plugin else None)
    trainer.fit(Tiny(), data)
    if plugin is not None and hasattr(plugin, "wait"):
        plugin.wait()
    return trainer, plugin


@pytest.mark.parametrize("async_save", [True, False])
def test_one_retention_over_step_epoch_and_time_checkpoints(tmp_path, async_save):
    # Step saves every 2 steps, epoch ends every 3, a time save after every step: 15 steps would
    # leave 7 + 5 + 15 files without retention; keep_last=2 leaves the two newest steps and last.ckpt.
    cfg = CheckpointConfig(every_n_steps=2, keep_last=2, every_minutes=1e-6, async_save=async_save)
    _, plugin = _fit(tmp_path, cfg, steps=15, epoch_len=3)
    assert isinstance(plugin, BackgroundCheckpointIO if async_save else AtomicCheckpointIO)
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 3 and LAST in names, names
    steps = sorted(int(n.split("step=")[1][:9]) for n in names if n != LAST)
    assert steps == [14, 15], names
    last = folder / LAST
    assert last.is_symlink() and torch.load(last, weights_only=True)["global_step"] == 15
    assert find_resume_checkpoint(tmp_path).resolve() == last.resolve()


def test_end_of_run_is_saved_between_periodic_saves(tmp_path):
    cfg = CheckpointConfig(every_n_steps=4, keep_last=3, save_on_epoch_end=False)
    _fit(tmp_path, cfg, steps=10, epoch_len=20)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step=000000004.ckpt", "step=000000008.ckpt", "step=000000010.ckpt"]


def test_background_save_is_a_snapshot_of_its_step(tmp_path):
    """The weights in each file are those of its step, though training went on while it was written."""
    cfg = CheckpointConfig(every_n_steps=1, keep_last=-1, save_on_epoch_end=False, async_save=True)
    _fit(tmp_path, cfg, steps=6, epoch_len=6)
    ref_dir = tmp_path / "sync"
    _fit(ref_dir, CheckpointConfig(every_n_steps=1, keep_last=-1, save_on_epoch_end=False, async_save=False),
         steps=6, epoch_len=6)
    for step in range(1, 7):
        name = f"step={step:09d}.ckpt"
        a = torch.load(tmp_path / "checkpoints" / name, weights_only=True)["state_dict"]["w"]
        b = torch.load(ref_dir / "checkpoints" / name, weights_only=True)["state_dict"]["w"]
        assert torch.equal(a, b), step


def test_keep_last_must_be_positive_or_minus_one(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        checkpoint_callbacks(CheckpointConfig(keep_last=0), tmp_path)


def test_resume_skips_last_link_and_stale_temp_files_are_pruned(tmp_path):
    cfg = CheckpointConfig(every_n_steps=2, keep_last=2, save_on_epoch_end=False)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".step=000000001.ckpt.tmp").write_bytes(b"half a checkpoint")  # a kill mid-write
    _fit(tmp_path, cfg, steps=4, epoch_len=8)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step=000000002.ckpt", "step=000000004.ckpt"]


@pytest.mark.parametrize("async_save, on_gpu, background", [(None, True, True), (None, False, False),
                                                           (True, False, True), (False, True, False)])
def test_background_writes_by_default_on_gpu_only(tmp_path, async_save, on_gpu, background):
    cfg = CheckpointConfig(async_save=async_save)
    plugin = checkpoint_io(cfg, tmp_path, checkpoint_callbacks(cfg, tmp_path), deepspeed=False, on_gpu=on_gpu)
    assert isinstance(plugin, BackgroundCheckpointIO) == background and isinstance(plugin, (AtomicCheckpointIO,
                                                                                             BackgroundCheckpointIO))
    assert checkpoint_io(cfg, tmp_path, checkpoint_callbacks(cfg, tmp_path), deepspeed=True, on_gpu=on_gpu) is None


def test_resuming_into_the_folder_does_not_warn_that_it_is_not_empty(tmp_path):
    cfg = CheckpointConfig(every_n_steps=2, keep_last=2, save_on_epoch_end=False)
    _fit(tmp_path, cfg, steps=2, epoch_len=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, cfg, steps=4, epoch_len=8)
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    assert (tmp_path / "checkpoints" / LAST).resolve().name == "step=000000004.ckpt"
