"""The few torch.distributed collectives the evaluations need (no-ops in a single process).

Every evaluation runs its forwards on the local shard of every rank and reduces afterwards, so
1 and N processes give the same metrics on the same data.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from clipl.ranks import is_distributed, rank_and_world


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (returns a new tensor; ``t`` is left as it was)."""
    out = t.clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (N_rank, ...) over ranks in rank order; ranks may hold different N."""
    if not is_distributed():
        return t
    world = rank_and_world()[1]
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    # all_gather needs equal shapes: pad every rank to the largest shard, then cut the padding.
    pad = max(sizes_i) - t.shape[0]
    padded = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t.contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes_i)])


def gather_sorted(index: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gather rows from all ranks and sort them by the global sample ``index``.

    The result is independent of how samples were sharded, so anything computed from it (a
    linear probe's split and fit) is the same for 1 and N processes.
    """
    index = all_gather_rows(index)
    gathered = [all_gather_rows(t) for t in tensors]
    order = torch.argsort(index, stable=True)
    return (index[order], *[g[order] for g in gathered])


def broadcast_from_zero(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (so results computed on every rank agree bit for bit)."""
    out = t.clone()
    if is_distributed():
        dist.broadcast(out, src=0)
    return out
