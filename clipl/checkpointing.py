"""Checkpoints in the run directory: periodic saving, pre-emption saves, and finding where to resume.

Layout: <out_dir>/checkpoints/step=000001000.ckpt (periodic, the newest ``keep_last`` kept),
epoch=0003-step=000004000.ckpt (end of epoch), time-step=*.ckpt (every N minutes), best-step=*.ckpt
(top-k by a metric) and preempt-step=....ckpt (written on SIGTERM). Files are written to a temporary
name and renamed; a checkpoint that is unreadable all the same is skipped with a warning, never deleted.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from clipl.config.schema import CheckpointConfig

log = logging.getLogger(__name__)
_STEP = re.compile(r"step=(\d+)")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_callbacks(cfg: CheckpointConfig, out_dir: str | Path) -> list[L.Callback]:
    """ModelCheckpoint callbacks: every N steps (newest ``keep_last``), at each epoch end, every N
    minutes and top-k by a metric, as the config asks; then the pre-emption save."""
    dirpath = checkpoint_dir(out_dir)

    def saver(filename: str, **when) -> ModelCheckpoint:
        # All in one folder under fixed names: no metric names in them, and no "-v1" copies, so
        # find_resume_checkpoint can read the step from every file name.
        return ModelCheckpoint(dirpath=dirpath, filename=filename, auto_insert_metric_name=False,
                               enable_version_counter=False, **when)

    # monitor="step", mode="max": keep the newest, not the "best".
    callbacks: list[L.Callback] = [
        saver("step={step:09d}", every_n_train_steps=cfg.every_n_steps, save_top_k=cfg.keep_last,
              monitor="step", mode="max", save_on_train_epoch_end=False)
    ]
    if cfg.save_on_epoch_end:
        callbacks.append(saver("epoch={epoch:04d}-step={step:09d}", every_n_epochs=1, save_top_k=-1,
                               save_on_train_epoch_end=True))
    if cfg.every_minutes is not None:
        callbacks.append(saver("time-step={step:09d}", train_time_interval=timedelta(minutes=cfg.every_minutes),
                               save_top_k=1, monitor="step", mode="max"))
    if cfg.monitor is not None:
        callbacks.append(saver("best-step={step:09d}", monitor=cfg.monitor, mode=cfg.monitor_mode,
                               save_top_k=cfg.top_k))
    callbacks.append(PreemptionCheckpoint(dirpath))
    return callbacks


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place,
    so a kill mid-write never leaves a half-written file under a checkpoint's name."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)  # atomic on POSIX within one filesystem


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (cluster pre-emption, `kill`), save a checkpoint before Lightning stops the run.

    Lightning's signal connector sets ``trainer.received_sigterm`` (broadcast from rank 0) and raises
    at the end of the current batch; this saves at that batch's end, like the periodic checkpoints.
    """

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.received_sigterm and self.saved is None:
            self.saved = self.dirpath / f"preempt-step={trainer.global_step:09d}.ckpt"
            trainer.save_checkpoint(self.saved)


def _step_of(path: Path) -> int:
    match = _STEP.search(path.name)
    return int(match.group(1)) if match else -1


def readable(path: Path) -> bool:
    """A cheap integrity check: torch.save writes a zip whose directory sits at the end of the file,
    so a file truncated by a kill fails to open as a zip. DeepSpeed checkpoints are folders."""
    if path.is_dir():
        return (path / "latest").is_file() or any(path.glob("**/*model_states.pt"))
    try:
        with zipfile.ZipFile(path) as zf:
            return len(zf.namelist()) > 0
    except (zipfile.BadZipFile, OSError):
        return False


def find_resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest readable checkpoint of the run directory: ours in checkpoints/, and Lightning's
    SLURM pre-emption saves (hpc_ckpt_*.ckpt) in the run directory itself. Newest by write time,
    then by step, so a pre-emption save made after the last periodic one wins."""
    out_dir = Path(out_dir)
    candidates = list(checkpoint_dir(out_dir).glob("*.ckpt")) + list(out_dir.glob("hpc_ckpt_*.ckpt"))
    for path in sorted(candidates, key=lambda p: (p.stat().st_mtime, _step_of(p)), reverse=True):
        if readable(path):
            return path
        log.warning("skipping unreadable (truncated?) checkpoint %s", path)
    return None
