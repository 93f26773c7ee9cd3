"""The short table `lightning run` prints when training ends or is interrupted: what the run reached and
where its results are.

Throughput is measured here, not read from the ``perf/*`` metrics: it covers the whole session after
a warm-up (the first 10% of the steps, at most 10, which carry loader start-up and kernel
autotuning), not the last logging window. Data wait is the share of that time spent between one
training batch's end and the next one's start (waiting for the loader, and writing checkpoints when
they are not written in the background), validation and epoch switches left out.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import lightning as L

from clipl.training.checkpointing import LAST, checkpoint_dir

WARMUP_MAX = 10


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict) and "text" in batch:
        return int(batch["text"].shape[0])
    return len(batch) if hasattr(batch, "__len__") else 0


def _steps(n: int) -> str:
    return "step" if n == 1 else f"{n} steps"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


class RunSummary(L.Callback):
    """Counts steps, samples and time during fit; :meth:`render` makes the table (rank 0 prints it)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.started = time.perf_counter()
        self.first_step: Optional[int] = None
        self.batches = self.samples = 0
        self.warmup = WARMUP_MAX
        self.warm_at: Optional[float] = None  # time the warm-up ended
        self.warm_samples = 0
        self.wait = 0.0
        self._last_end: Optional[float] = None
        self.loss: Optional[float] = None
        self.evals: dict[str, dict[str, float]] = {}
        self.trainer: Optional[L.Trainer] = None

    # ------------------------------------------------------------------ counting
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trainer = trainer
        self.first_step = trainer.global_step
        total = trainer.estimated_stepping_batches
        if isinstance(total, (int, float)) and math.isfinite(total):
            self.warmup = max(1, min(WARMUP_MAX, int(total - trainer.global_step) // 10))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = None  # the loader's start-up per epoch is not a data wait

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last_end = None

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._last_end is not None and self.warm_at is not None:
            self.wait += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = _batch_size(batch) * trainer.world_size
        self.batches += 1
        self.samples += n
        if self.warm_at is not None:
            self.warm_samples += n
        elif self.batches >= self.warmup:
            self.warm_at = time.perf_counter()
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.loss = float(loss)
        self._last_end = time.perf_counter()

    def _collect_evals(self) -> None:
        if self.trainer is None:
            return
        for cb in self.trainer.callbacks:
            for name, value in (getattr(cb, "last_metrics", None) or {}).items():
                group, _, metric = name.removeprefix("val/").rpartition("/")
                self.evals.setdefault(group, {})[metric] = float(value)

    # ------------------------------------------------------------------ the table
    def rows(self, status: str) -> list[tuple[str, str]]:
        self._collect_evals()
        now = time.perf_counter()
        rows = [("status", status)]
        step = self.trainer.global_step if self.trainer is not None else None
        if step is not None:
            resumed = f" (resumed at {self.first_step})" if self.first_step else ""
            rows.append(("steps", f"{step}{resumed}"))
        rows.append(("samples", f"{self.samples:,} this session"))
        rows.append(("wall time", _duration(now - self.started)))
        if self.warm_at is not None and self.warm_samples:
            busy = self._training_end - self.warm_at
            rows.append(("samples/s", f"{self.warm_samples / busy:,.1f} (mean after the first {_steps(self.warmup)})"))
            rows.append(("data wait", f"{self.wait / busy:.1%} of that time between steps (loader, checkpoint writes)"))
        if self.loss is not None:
            rows.append(("final loss", f"{self.loss:.4g}"))
        for group in sorted(self.evals):
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(self.evals[group].items()))
            rows.append((f"eval {group}", metrics))
        folder = checkpoint_dir(self.out_dir)
        kept = sorted(p.name for p in folder.glob("*.ckpt") if p.name != LAST) if folder.is_dir() else []
        if kept:
            last = folder / LAST
            newest = f"{LAST} -> {last.resolve().name}" if last.is_symlink() else (LAST if last.exists() else kept[-1])
            rows.append(("checkpoints", f"{folder}/ ({len(kept)} kept; newest: {newest})"))
        results = self.out_dir / "eval"
        if results.is_dir() and any(results.glob("*.json")):
            rows.append(("eval results", f"{results}/*.json"))
        return rows

    @property
    def _training_end(self) -> float:
        return self._last_end if self._last_end is not None else time.perf_counter()

    def render(self, status: str) -> str:
        rows = self.rows(status)
        width = max(len(k) for k, _ in rows)
        lines = [f"  {k:<{width}}  {v}" for k, v in rows]
        title = f"clipl run summary: {self.out_dir}"
        return "\n".join([title, *lines])
