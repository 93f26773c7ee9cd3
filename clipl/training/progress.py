"""The progress bar of `lightning run`: Lightning's own (Rich when installed, else tqdm) with short,
readable metric names ("loss", "samples/s" instead of a truncated "perf/samples_per_…"), no logger
version number, and "Epoch 3" instead of "Epoch 3/-2" when the run is bounded by steps."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

SHORT_NAMES: dict[str, str] = {
    "train/loss": "loss",
    "perf/samples_per_sec": "samples/s",
    "perf/mfu": "mfu",
}
"""Logged metric -> its name in the progress bar; other prog_bar metrics show their last path part."""


def readable(items: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in items.items():
        if name == "v_num":  # the logger's run version: noise next to the metrics
            continue
        if isinstance(value, torch.Tensor):
            value = value.item()
        if name == "perf/samples_per_sec":
            value = round(float(value), 1)
        out[SHORT_NAMES.get(name, name.rsplit("/", 1)[-1])] = value
    return out


class RichBar(RichProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        return readable(super().get_metrics(trainer, pl_module))

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = self.trainer.max_epochs
        # Lightning sets max_epochs=-1 when only max_steps bounds the run: "Epoch 0/-2" otherwise.
        text = f"Epoch {current_epoch}" + (f"/{epochs - 1}" if epochs is not None and epochs > 0 else "")
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text


class TqdmBar(TQDMProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        return readable(super().get_metrics(trainer, pl_module))


def progress_bar() -> ProgressBar:
    return RichBar() if _RICH_AVAILABLE else TqdmBar()
