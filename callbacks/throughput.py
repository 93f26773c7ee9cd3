"""Throughput, MFU, data-wait and memory monitoring, without a host-device sync on every step.

Lightning's own ThroughputMonitor (lightning.pytorch.callbacks) would do the MFU arithmetic, but it
calls ``torch.cuda.synchronize()`` after every batch, which stalls the queue of a sync-free training
step. This callback times windows between logging steps instead: on CUDA it synchronises once per
window, at the logging step, so the window's wall time covers exactly the kernels queued in it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import lightning as L
import torch

from clipl.flops import ModelFlops, device_peak_flops, model_flops

log = logging.getLogger(__name__)


def _batch_size(batch: Any) -> int:
    return int(batch["text"].shape[0])


class PerfMonitor(L.Callback):
    """Logs, every ``trainer.log_every_n_steps`` optimiser steps, averaged over the window since the last:

    - ``perf/samples_per_sec``: samples over all ranks per second of training wall time;
    - ``perf/tflops_per_device``: achieved model TFLOP/s per device (training FLOPs per sample from
      ``flops``: forward + backward of both towers with the run's locks, plus the logits);
    - ``perf/mfu``: ``tflops_per_device`` over the device's peak dense TFLOP/s (``peak_tflops``, or
      clipl's device table on CUDA; not logged when neither knows the device);
    - ``perf/data_wait_fraction``: the share of the window's wall time the host spent between one
      step's end and the next one's start (waiting for the loader, host-to-device copies, checkpoint
      writes): the loader is the bottleneck when this is large;
    - ``perf/max_memory_gib`` on CUDA (peak allocated memory since the start).

    Validation and epoch switches are left out of the windows. The first window starts at the end of
    the first step, so one-off start-up costs (torch.compile, cuDNN autotuning) stay out of it.
    """

    def __init__(
        self,
        flops: Optional[ModelFlops] = None,
        peak_tflops: Optional[float] = None,
        contrastive_batch: Optional[int] = None,
        batch_size_fn: Callable[[Any], int] = _batch_size,
    ) -> None:
        super().__init__()
        self.flops = flops
        self.peak_tflops = peak_tflops
        self.contrastive_batch = contrastive_batch
        self.batch_size_fn = batch_size_fn
        self.peak_flops: Optional[float] = None
        self._t0: Optional[float] = None  # start of the current window (None: not started)
        self._last_end: Optional[float] = None  # end of the previous step, for the data wait
        self._paused_at: Optional[float] = None  # start of a period left out of the window
        self._samples = 0
        self._wait = 0.0
        self._excluded = 0.0

    @classmethod
    def from_config(cls, cfg: Any, plan: Any = None) -> "PerfMonitor":
        """The monitor for a RunConfig: FLOPs counted from its model and locks, its trainer.peak_tflops,
        and the batch ``plan``'s contrastive batch (the logits' size; default: loader batch x world)."""
        try:
            flops = model_flops(cfg.model, cfg.optim)
        except Exception as e:  # a tower that cannot be built on the meta device: no MFU, training goes on
            log.warning("could not count the model's FLOPs (%s: %s); perf/mfu will not be logged", type(e).__name__, e)
            flops = None
        contrastive = None if plan is None else plan.contrastive_batch_size
        return cls(flops=flops, peak_tflops=cfg.trainer.peak_tflops, contrastive_batch=contrastive)

    # ------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        self.peak_flops = device_peak_flops(device, str(trainer.precision), self.peak_tflops)
        if self.flops is not None and self.peak_flops is None and trainer.is_global_zero:
            log.info("peak FLOP/s of %s unknown: set trainer.peak_tflops to log perf/mfu", device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()  # the loader's start-up is not a data wait

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._paused_at is not None:
            self._excluded += now - self._paused_at if self._t0 is not None else 0.0
            self._paused_at = None
        elif self._last_end is not None and self._t0 is not None:
            self._wait += now - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t0 is None:  # the end of the first step opens the first window
            self._t0 = self._last_end = time.perf_counter()
            return
        self._samples += self.batch_size_fn(batch)
        # Lightning's own condition for pushing step metrics to the loggers (log_every_n_steps, counted
        # in optimiser steps); the last micro-batch of an accumulation window ends the optimiser step.
        if trainer._logger_connector.should_update_logs and not trainer.fit_loop._should_accumulate():
            self._log_window(trainer, pl_module, batch)
        self._last_end = time.perf_counter()

    # ---------------------------------------------------------------------------------- windows
    def _pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.perf_counter()

    def _log_window(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per window: its kernels are done before it is timed
        now = time.perf_counter()
        wall = now - self._t0 - self._excluded
        if wall <= 0 or self._samples == 0:
            return
        world = trainer.world_size
        per_device = self._samples / wall
        metrics = {
            "perf/samples_per_sec": per_device * world,
            "perf/data_wait_fraction": min(1.0, self._wait / wall),
        }
        if self.flops is not None:
            contrastive = self.contrastive_batch or self.batch_size_fn(batch) * world
            achieved = per_device * self.flops.train(contrastive)
            metrics["perf/tflops_per_device"] = achieved / 1e12
            if self.peak_flops:
                metrics["perf/mfu"] = achieved / self.peak_flops
        if device.type == "cuda":
            metrics["perf/max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        for name, value in metrics.items():
            pl_module.log(name, value, prog_bar=name == "perf/samples_per_sec", rank_zero_only=True)
        self._t0, self._samples, self._wait, self._excluded = now, 0, 0.0, 0.0
