"""Training-step statistics kept on the device and read by the host only at logging steps.

Reading a CUDA tensor from Python (``.item()``, ``bool()``, ``float()``) waits for every kernel queued
before it, so a per-step read stalls the GPU once per step. The counters here are updated with
device ops only; :meth:`StepStats.read` copies them to the host in one transfer, at logging steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from clipl.ranks import rank_and_world


@dataclass
class Window:
    """What the host learns at a logging step about the steps since the previous one."""

    nonfinite_steps: int
    """Non-finite (skipped) optimiser steps over the whole run."""
    longest_nonfinite_run: int
    """The longest run of consecutive non-finite steps that ended in, or reaches into, this window."""
    loss_mean: Optional[float]
    """Mean loss over the window's finite steps (None: every step was non-finite)."""

    @classmethod
    def of(cls, values: list[float]) -> "Window":
        """From the host copy of :meth:`StepStats.take`'s tensor."""
        total, longest, mean = values
        return cls(int(total), int(longest), None if mean != mean else mean)


class StepStats:
    """Device counters: non-finite steps (total, current run, longest run) and the window's loss sum."""

    def __init__(self, device: torch.device, nonfinite_steps: int = 0):
        def zero(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((), dtype=dtype, device=device)

        self._total = zero(torch.int64) + int(nonfinite_steps)
        self._run = zero(torch.int64)  # consecutive non-finite steps up to the latest one
        self._longest = zero(torch.int64)  # longest such run since the last read
        self._loss_sum = zero(torch.float32)
        self._loss_steps = zero(torch.float32)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> None:
        """Count one optimiser step (``finite``: 0-dim bool; ``loss``: this rank's loss). Device ops only."""
        bad = (~finite).to(torch.int64)
        self._total += bad
        self._run.add_(1).mul_(bad)  # (run + 1) on a non-finite step, 0 on a finite one
        torch.maximum(self._longest, self._run, out=self._longest)
        self._loss_sum += torch.where(finite, loss.float(), torch.zeros_like(self._loss_sum))
        self._loss_steps += finite.to(torch.float32)

    def take(self) -> torch.Tensor:
        """The window's counters as one device tensor (total, longest run, loss mean or NaN); starts a new window.

        The caller reads it to the host together with its other metrics (:meth:`Window.of`): one read.
        """
        mean = torch.where(self._loss_steps > 0, self._loss_sum / self._loss_steps.clamp(min=1),
                           torch.full_like(self._loss_sum, float("nan")))
        values = torch.stack([self._total.float(), self._longest.float(), mean])
        self._longest.copy_(self._run)  # a run still going on carries over into the next window
        self._loss_sum.zero_()
        self._loss_steps.zero_()
        return values

    def nonfinite_total(self) -> int:
        """Non-finite steps so far (a host read: for checkpoints and callers, not for every step)."""
        return int(self._total.item())


@torch.no_grad()
def in_batch_accuracy(image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image->text, text->image) top-1 accuracy of this rank's features against each other, on device."""
    logits = image.float() @ text.float().T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (logits.argmax(dim=1) == target).float().mean(), (logits.argmax(dim=0) == target).float().mean()


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``values`` over all ranks (one all-reduce; logging steps only)."""
    _, world = rank_and_world()
    if world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= world
    return values
