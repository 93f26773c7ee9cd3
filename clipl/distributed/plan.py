"""The batch plan: one resolved answer to "how many samples, where, per optimiser step".

Computed once from the config and the world (devices x nodes) and handed to the data module (what
one rank's loader yields per step), the CLIPModule (how it splits that into micro-batches and how
many negatives the loss sees) and the Trainer (which never accumulates by itself).

    global_batch_size = micro_batch_size x accumulation x world_size

With contrastive accumulation (the default) the loss of one optimiser step is computed over the whole
global batch: every pair is a negative for every other, as in the paper (32,768). Without it, each
micro-batch's loss sees only micro_batch_size x world_size pairs and the gradients are averaged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from clipl.distributed.world import world_size
from clipl.training.config import TrainerConfig


@dataclass(frozen=True)
class BatchPlan:
    """The resolved batch arithmetic of a run (see the module docstring)."""

    global_batch_size: int
    """Samples per optimiser step, over all ranks."""
    micro_batch_size: int
    """Samples in one forward/backward on one device (bounds activation memory)."""
    accumulation: int
    """Micro-batches per device per optimiser step."""
    world_size: int
    """Ranks (devices x nodes)."""
    contrastive_accumulation: bool = True
    """The loss sees the whole global batch (cached-feature accumulation) rather than each micro-batch."""

    @property
    def per_device_batch_size(self) -> int:
        """Samples one rank's loader yields per optimiser step (micro_batch_size x accumulation)."""
        return self.micro_batch_size * self.accumulation

    @property
    def contrastive_batch_size(self) -> int:
        """Pairs one loss computation contrasts: the global batch, or one micro-batch per rank."""
        if self.contrastive_accumulation or self.accumulation == 1:
            return self.global_batch_size
        return self.micro_batch_size * self.world_size

    def to_dict(self) -> dict[str, Any]:
        """The plan's fields and derived sizes, for the run's logged hyperparameters."""
        return {**asdict(self), "per_device_batch_size": self.per_device_batch_size,
                "contrastive_batch_size": self.contrastive_batch_size}

    def describe(self) -> str:
        """One line for the start-up log."""
        mode = "contrastive accumulation" if self.contrastive_accumulation else "plain gradient accumulation"
        acc = f"{self.accumulation} micro-batch(es) of {self.micro_batch_size:,} per device"
        return (
            f"batch plan: global {self.global_batch_size:,} = {acc} x {self.world_size} rank(s)"
            + (f" ({mode})" if self.accumulation > 1 else "")
            + f"; contrastive batch {self.contrastive_batch_size:,}"
        )


def resolve_plan(
    global_batch_size: Optional[int],
    micro_batch_size: int,
    world_size: int,
    contrastive_accumulation: bool = True,
    *,
    global_field: str = "trainer.global_batch_size",
    micro_field: str = "trainer.micro_batch_size",
) -> BatchPlan:
    """The plan for a global batch (None: one micro-batch per rank, no accumulation).

    Raises ValueError naming the fields and the nearest valid global batches when the global batch is
    not a multiple of ``world_size x micro_batch_size``.
    """
    if micro_batch_size < 1:
        raise ValueError(f"{micro_field} must be >= 1, got {micro_batch_size}")
    if world_size < 1:
        raise ValueError(f"the world size (devices x num_nodes) must be >= 1, got {world_size}")
    step = micro_batch_size * world_size
    if global_batch_size is None:
        global_batch_size = step
    if global_batch_size < 1:
        raise ValueError(f"{global_field} must be >= 1, got {global_batch_size}")
    if global_batch_size % step:
        lower, upper = (global_batch_size // step) * step, (global_batch_size // step + 1) * step
        nearest = " or ".join(str(v) for v in (lower, upper) if v > 0)
        hint = f"use {global_field}={nearest}"
        if global_batch_size % world_size == 0:
            hint += f", or a {micro_field} that divides {global_batch_size // world_size} (per rank)"
        raise ValueError(
            f"{global_field}={global_batch_size} is not a multiple of {micro_field}={micro_batch_size} x "
            f"{world_size} rank(s) = {step}: {hint}"
        )
    return BatchPlan(
        global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size,
        accumulation=global_batch_size // step,
        world_size=world_size,
        contrastive_accumulation=contrastive_accumulation,
    )


def plan_for(cfg: TrainerConfig) -> BatchPlan:
    """The plan of a TrainerConfig: its micro/global batch fields over its world (devices x num_nodes)."""
    return resolve_plan(cfg.global_batch_size, cfg.micro_batch_size, world_size(cfg), cfg.contrastive_accumulation)
