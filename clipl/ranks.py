"""The one place clipl asks which process it is: rank and world size, from torch.distributed or the launcher.

Inside a process group, torch.distributed is the truth (:func:`rank_and_world`); before one exists
(the `clipl eval` launcher deciding whether to create it) the launcher's environment variables are
(:func:`launcher_env`). Lightning code asks its Trainer instead (``trainer.global_rank``), which
agrees with these once the strategy has set up the group.
"""

from __future__ import annotations

import os
from typing import Optional

import torch.distributed as dist


class _Local:
    """The group of this process alone (see :data:`LOCAL`)."""

    def __repr__(self) -> str:
        return "clipl.ranks.LOCAL"


LOCAL = _Local()
"""A group argument meaning "this process alone": :func:`rank_and_world` answers (0, 1) for it inside a
process group too, so code written for groups (the objectives) computes a per-rank quantity without
collectives, as validation's in-batch loss does on each rank's own batches."""


def initialized() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group: Optional["dist.ProcessGroup"] = None) -> tuple[int, int]:
    """(rank, world size) in ``group`` (default: the world); (0, 1) without a process group or for LOCAL."""
    if group is LOCAL or not initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_distributed(group: Optional["dist.ProcessGroup"] = None) -> bool:
    """True inside a process group of more than one rank (collectives would communicate)."""
    return rank_and_world(group)[1] > 1


def is_rank_zero() -> bool:
    """True on the global rank 0, and in a single process."""
    return rank_and_world()[0] == 0


def launcher_env() -> tuple[int, int]:
    """(local rank, world size) that torchrun/Lightning-style launchers export (LOCAL_RANK, WORLD_SIZE);
    (0, 1) when the process was started directly."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
