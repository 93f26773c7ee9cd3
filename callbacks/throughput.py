"""Throughput, data-wait and memory monitoring (and MFU when the FLOPs per sample are known)."""

from __future__ import annotations

import time
from typing import Any, Optional

import lightning as L
import torch


class ThroughputMonitor(L.Callback):
    """Logs ``perf/samples_per_sec`` (global), ``perf/data_wait_fraction`` (time between batches,
    i.e. waiting for the loader, over wall time), ``perf/max_memory_gib`` on CUDA, and ``perf/mfu``
    when ``flops_per_sample`` (training FLOPs: ~3x forward) and ``peak_flops`` are given.

    Timings are averaged over the logging window, so one slow step does not dominate.
    """

    def __init__(
        self, flops_per_sample: Optional[float] = None, peak_flops: Optional[float] = None
    ) -> None:
        self.flops_per_sample = flops_per_sample
        self.peak_flops = peak_flops
        self._reset()
        self._last_end: Optional[float] = None

    def _reset(self) -> None:
        self._samples = 0
        self._wait = 0.0
        self._busy = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # do not count the epoch switch (worker start-up) as a data wait

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._wait += now - self._last_end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # honest timings: wait for queued kernels
        now = time.perf_counter()
        self._busy += now - self._start
        self._last_end = now
        self._samples += int(batch["text"].shape[0]) * trainer.world_size
        every = max(1, trainer.log_every_n_steps)
        if (batch_idx + 1) % every:
            return
        wall = self._busy + self._wait
        sps = self._samples / wall if wall > 0 else 0.0
        pl_module.log("perf/samples_per_sec", sps, prog_bar=True, rank_zero_only=True)
        pl_module.log("perf/data_wait_fraction", self._wait / wall if wall > 0 else 0.0, rank_zero_only=True)
        if pl_module.device.type == "cuda":
            gib = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            pl_module.log("perf/max_memory_gib", gib, rank_zero_only=True)
        if self.flops_per_sample and self.peak_flops:
            per_device = sps / trainer.world_size
            pl_module.log("perf/mfu", per_device * self.flops_per_sample / self.peak_flops, rank_zero_only=True)
        self._reset()
