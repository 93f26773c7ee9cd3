"""Checkpoints in the run directory: when they are written, how many are kept, and where to resume.

Layout of <out_dir>/checkpoints/: step=000001000.ckpt (every ``every_n_steps``), epoch=0003-step=...ckpt
(end of an epoch), time-step=...ckpt (every N minutes), preempt-step=...ckpt (on SIGTERM),
best-step=...ckpt (top-k by a metric) and ``last.ckpt``, a link to the newest one.

Retention is one policy over every kind (:class:`Retention`): after each completed write the newest
``keep_last`` checkpoints are kept (two of the same step count once: the older copy is removed),
the best ``top_k`` are kept by their own callback, everything older is deleted. So the folder holds at
most ``keep_last`` + ``top_k`` checkpoints and ``last.ckpt``, whatever the run's length.

Files are written to a temporary name and renamed (atomic), on GPUs in a background thread
(``checkpoint.async_save``; not under DeepSpeed, which writes its own folders): training goes on while
a checkpoint is written, and every write is complete before ``run()`` returns. A checkpoint that
is unreadable all the same is skipped with a warning when resuming, never deleted by that search.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from clipl.training.config import CheckpointConfig

log = logging.getLogger(__name__)
_STEP = re.compile(r"step=(\d+)")
LAST = "last.ckpt"
"""The name of the link to the newest checkpoint (what `clipl eval RUN/checkpoints/last.ckpt` reads)."""
HPC_GLOB = "hpc_ckpt_*.ckpt"  # Lightning's own SLURM pre-emption saves, in the run directory


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def _step_of(path: Path) -> int:
    match = _STEP.search(path.name)
    return int(match.group(1)) if match else -1


class Retention:
    """Keeps the newest ``keep_last`` checkpoints of every kind (best-* excepted: their callback keeps
    its ``top_k``) and points ``last.ckpt`` at the newest. Called on global rank 0 once a write is
    complete (by the checkpoint IO, or by the saving callback when no clipl IO writes the files)."""

    def __init__(self, out_dir: str | Path, keep_last: int) -> None:
        # CheckpointConfig refuses such a keep_last already; this class deletes files, so it refuses
        # one passed to it directly too (0 would delete every checkpoint it writes).
        if keep_last == 0 or keep_last < -1:
            raise ValueError(f"checkpoint.keep_last must be -1 (keep all) or >= 1, got {keep_last}")
        self.run_dir, self.dirpath, self.keep_last = Path(out_dir), checkpoint_dir(out_dir), keep_last
        self.saved_steps: set[int] = set()  # steps saved (or queued) by this process

    def published(self, path: str | Path) -> None:
        path = Path(path)
        # ModelCheckpoint hands over real paths; the run directory may be relative or behind a link.
        folder = os.path.realpath(path.parent)
        if folder == os.path.realpath(self.dirpath):
            _link_last(path)
        elif not (folder == os.path.realpath(self.run_dir) and path.match(HPC_GLOB)):
            return  # a checkpoint saved elsewhere (trainer.save_checkpoint by the user) is not ours
        self.prune()

    def prune(self) -> None:
        for stale in self.dirpath.glob(".*.ckpt.tmp"):  # left by a kill mid-write; never a live one:
            _remove(stale)  # writes and pruning run one after another on the same thread
        if self.keep_last < 0:
            return
        kept, steps = 0, set()
        for path in _newest_first(self._candidates()):
            step = _step_of(path)
            if kept < self.keep_last and (step < 0 or step not in steps):
                kept += 1
                steps.add(step)
            else:
                _remove(path)

    def _candidates(self) -> list[Path]:
        mine = [p for p in self.dirpath.glob("*.ckpt") if p.name != LAST and not p.name.startswith("best-")]
        return mine + list(self.run_dir.glob(HPC_GLOB))


def _newest_first(paths: list[Path]) -> list[Path]:
    """Newest by write time, then by step: the order in which resume tries them."""
    return sorted(paths, key=lambda p: (p.stat().st_mtime, _step_of(p)), reverse=True)


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        log.debug("retention removed %s", path)
    except FileNotFoundError:
        pass


def _link_last(target: Path) -> None:
    """Atomically point <dir>/last.ckpt at ``target`` (a relative symlink; a hard link where the
    filesystem has no symlinks; DeepSpeed's checkpoint folders need the symlink)."""
    last, tmp = target.with_name(LAST), target.with_name(f".{LAST}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp, target_is_directory=target.is_dir())
    except OSError:
        if target.is_dir():
            log.warning("cannot link %s to %s (no symlinks here); name the newest checkpoint instead", last, target)
            return
        os.link(target, tmp)
    os.replace(tmp, last)


def _io_publishes(trainer: L.Trainer) -> bool:
    """Whether the trainer's checkpoint IO is ours (it calls Retention.published after each write)."""
    io = trainer.strategy.checkpoint_io
    return isinstance(io, AtomicCheckpointIO) or isinstance(getattr(io, "checkpoint_io", None), AtomicCheckpointIO)


def _save(trainer: L.Trainer, path: Path, retention: Retention, weights_only: bool = False) -> None:
    retention.saved_steps.add(trainer.global_step)
    trainer.save_checkpoint(path, weights_only=weights_only)
    if trainer.is_global_zero and not _io_publishes(trainer):
        retention.published(path)  # DeepSpeed / a plain Trainer: the write above was synchronous


class _Saver(ModelCheckpoint):
    """A ModelCheckpoint whose writes go through the run's retention policy (and, for the step
    saver, that also saves the final step when the run ends between two periodic saves)."""

    def __init__(self, retention: Retention, final: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.retention, self.final = retention, final

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath) -> None:
        # Lightning warns when the folder already holds files. Here it always does on resume, by
        # design: the savers share it and the Retention decides what stays. Nothing to warn about.
        pass

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        _save(trainer, Path(filepath), self.retention, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        step = trainer.global_step
        on_disk = {_step_of(p) for p in Path(self.dirpath).glob("*.ckpt")}  # e.g. a finished run relaunched
        if self.final and step > 0 and step not in self.retention.saved_steps | on_disk and not trainer.received_sigterm:
            self._save_checkpoint(trainer, os.path.join(self.dirpath, f"step={step:09d}.ckpt"))


def checkpoint_callbacks(cfg: CheckpointConfig, out_dir: str | Path) -> list[L.Callback]:
    """The savers the config asks for (every N steps and at the end, each epoch end, every N minutes,
    top-k by a metric) sharing one :class:`Retention`; then the pre-emption save."""
    dirpath = checkpoint_dir(out_dir)
    retention = Retention(out_dir, cfg.keep_last)

    def saver(filename: str, save_top_k: int = -1, **when) -> ModelCheckpoint:
        # All in one folder under fixed names: no metric names in them, and no "-v1" copies, so
        # find_resume_checkpoint can read the step from every file name. save_top_k=-1: the
        # Retention, not each callback, decides what is deleted.
        return _Saver(retention, dirpath=dirpath, filename=filename, auto_insert_metric_name=False,
                      enable_version_counter=False, save_top_k=save_top_k, **when)

    callbacks: list[L.Callback] = [
        saver("step={step:09d}", every_n_train_steps=cfg.every_n_steps, save_on_train_epoch_end=False, final=True)
    ]
    if cfg.save_on_epoch_end:
        callbacks.append(saver("epoch={epoch:04d}-step={step:09d}", every_n_epochs=1, save_on_train_epoch_end=True))
    if cfg.every_minutes is not None:
        callbacks.append(saver("time-step={step:09d}", train_time_interval=timedelta(minutes=cfg.every_minutes)))
    if cfg.monitor is not None:
        callbacks.append(saver("best-step={step:09d}", save_top_k=cfg.top_k, monitor=cfg.monitor,
                               mode=cfg.monitor_mode))
    callbacks.append(PreemptionCheckpoint(dirpath, retention))
    return callbacks


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place,
    so a kill mid-write never leaves a half-written file under a checkpoint's name; then tells the
    retention policy (``on_saved``) that the checkpoint exists."""

    def __init__(self, on_saved: Optional[Callable[[Path], None]] = None) -> None:
        super().__init__()
        self.on_saved = on_saved

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
        if self.on_saved is not None:
            self.on_saved(path)


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Lightning's AsyncCheckpointIO (tensors are copied on the training thread, written on one
    background thread) with removals queued behind the writes, so a callback that deletes a
    checkpoint it has just asked to write finds the file there. ``wait()`` returns once every queued
    write is on disk (Lightning also waits in its teardown, after a normal end and after SIGTERM)."""

    def remove_checkpoint(self, *args, **kwargs) -> None:
        self._ensure_setup()
        self._executor.submit(self.checkpoint_io.remove_checkpoint, *args, **kwargs)

    def wait(self) -> None:
        self.teardown()


def checkpoint_io(cfg: CheckpointConfig, out_dir: str | Path, callbacks: list[L.Callback], deepspeed: bool,
                  on_gpu: bool = False):
    """The checkpoint IO plugin of a run (None under DeepSpeed, which writes its own folders);
    background writes when ``cfg.async_save`` says so (None: when training on GPUs)."""
    if deepspeed:
        return None
    retention = next(cb.retention for cb in callbacks if isinstance(cb, PreemptionCheckpoint))
    atomic = AtomicCheckpointIO(on_saved=retention.published)
    background = on_gpu if cfg.async_save is None else cfg.async_save
    return BackgroundCheckpointIO(atomic) if background else atomic


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (cluster pre-emption, `kill`), save a checkpoint before Lightning stops the run.

    Lightning's signal connector sets ``trainer.received_sigterm`` (broadcast from rank 0) and raises
    at the end of the current batch; this saves at that batch's end, like the periodic checkpoints.
    """

    def __init__(self, dirpath: Path, retention: Optional[Retention] = None) -> None:
        self.dirpath = Path(dirpath)
        self.retention = retention or Retention(self.dirpath.parent, -1)
        self.saved: Path | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.received_sigterm and self.saved is None:
            self.saved = self.dirpath / f"preempt-step={trainer.global_step:09d}.ckpt"
            _save(trainer, self.saved, self.retention)


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
    then by step, so a pre-emption save made after the last periodic one wins. ``last.ckpt`` is
    only a link to one of them and is not a candidate of its own."""
    out_dir = Path(out_dir)
    candidates = [p for p in checkpoint_dir(out_dir).glob("*.ckpt") if p.name != LAST]
    for path in _newest_first(candidates + list(out_dir.glob(HPC_GLOB))):
        if readable(path):
            return path
        log.warning("skipping unreadable (truncated?) checkpoint %s", path)
    return None
