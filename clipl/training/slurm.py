"""SLURM pre-emption: the requeue signal becomes a checkpoint at a step boundary, `scontrol requeue`, exit.

SLURM warns a job before its time limit or pre-emption with a signal (``#SBATCH --signal=USR1@90``).
Lightning's own handler (with ``SLURMEnvironment(auto_requeue=True)``, the default) saves
``hpc_ckpt_<n>.ckpt`` inside the signal handler, i.e. in the middle of a step (the batch in progress is
counted as consumed by the data, but its update is not in the weights), and every rank saves when it
happens to get the signal. This callback replaces that handler: the signal only sets a flag; at the end
of each training batch the ranks agree (one boolean all-reduce, so a signal seen by any rank counts)
and all save together at that step boundary, under Lightning's name and place for it
(``<out_dir>/hpc_ckpt_<n>.ckpt``), which ``find_resume_checkpoint`` and Lightning's SLURM auto-resume
both pick up. Rank 0 then requeues the job as Lightning does (``scontrol requeue`` with
``$SLURM_ARRAY_JOB_ID_$SLURM_ARRAY_TASK_ID`` or ``$SLURM_JOB_ID``) and the run stops; ``clipl run``
exits with 143 (stopped for pre-emption), the same as after SIGTERM. SIGTERM keeps Lightning's
behaviour under SLURM (bypassed by its handler, noticed by clipl's PreemptionCheckpoint, which saves
at the end of the batch and exits 143).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Optional

import lightning as L
import torch

log = logging.getLogger(__name__)


def slurm_job_id() -> Optional[str]:
    """The id `scontrol requeue` takes: array job_task, else the job id (as Lightning computes it)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array is not None else os.environ.get("SLURM_JOB_ID")
    return job if job is not None and re.fullmatch(r"[0-9_-]+", job) else None


class SlurmRequeue(L.Callback):
    """Checkpoint at a step boundary and requeue on SLURM's requeue signal (see the module doc)."""

    def __init__(self) -> None:
        self.signalled = False
        self.saved: Optional[Path] = None
        self.requeued: Optional[bool] = None  # None: no signal; else whether scontrol succeeded
        self._active = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue):
            return
        # Lightning registered its handler when fit started; ours replaces it for the training loop.
        signal.signal(env.requeue_signal, self._on_signal)
        self._active = True

    def _on_signal(self, signum, frame) -> None:
        log.info("received the SLURM requeue signal %s: checkpoint at the end of this step, then requeue", signum)
        self.signalled = True

    def _agreed(self, trainer: L.Trainer) -> bool:
        flag = torch.tensor(int(self.signalled), device=trainer.strategy.root_device)
        return bool(trainer.strategy.reduce(flag, reduce_op="max").item()) if trainer.world_size > 1 else self.signalled

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if not self._active or self.saved is not None or not self._agreed(trainer):
            return
        from clipl.training.checkpointing import PreemptionCheckpoint, _save

        self.saved = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        pre = next((cb for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint)), None)
        if pre is not None:
            _save(trainer, Path(self.saved), pre.retention)
        else:
            trainer.save_checkpoint(self.saved)
        self.requeued = self._requeue() if trainer.is_global_zero else True
        trainer.should_stop = True

    def _requeue(self) -> bool:
        job = slurm_job_id()
        if job is None:
            log.warning("SLURM requeue signal but no usable SLURM_JOB_ID: checkpoint %s saved, not requeued", self.saved)
            return False
        try:
            code = subprocess.call(["scontrol", "requeue", job])
        except FileNotFoundError:
            code = 127
        if code != 0:
            log.warning("`scontrol requeue %s` failed (exit %d): checkpoint %s saved; resubmit the job", job, code,
                        self.saved)
        else:
            log.info("requeued SLURM job %s; it resumes from %s", job, self.saved)
        return code == 0
