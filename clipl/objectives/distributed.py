"""Differentiable collectives for objectives that see negatives from every rank.

Gradient convention used throughout clipl's objectives: each rank computes its *local* loss L_r
(its own rows of the global logit matrix), and the backward pass of every collective here
*sums* the incoming gradients over ranks. With DDP / DeepSpeed then *averaging* parameter
gradients over the W ranks, every parameter ends up with exactly the gradient of the global loss;
the arithmetic is written out in :mod:`clipl.objectives.contrastive`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.autograd import Function

from clipl.ranks import rank_and_world

ProcessGroup = Optional["dist.ProcessGroup"]


def world(group: ProcessGroup = None) -> tuple[int, int]:
    """(rank, world_size) of ``group``; (0, 1) when torch.distributed is not initialised."""
    return rank_and_world(group)


def check_equal_batch(local_batch: int, device: torch.device, group: ProcessGroup = None) -> None:
    """Raise a clear error (on every rank) unless all ranks hold ``local_batch`` samples.

    The gathered logit matrix and the rank-offset labels assume equal local batches; unequal ones
    would silently mislabel pairs or hang inside the collective, so we check first.
    """
    _, world_size = world(group)
    if world_size == 1:
        return
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([local_batch], dtype=torch.long, device=device), group=group)
    found = torch.cat(sizes).tolist()  # one host sync, not one per rank
    if len(set(found)) != 1:
        raise ValueError(
            f"distributed objectives need the same local batch size on every rank, got {found} "
            "(per rank). Drop the last incomplete batch (data `drop_last`) or make every rank run "
            "the same number of samples per step."
        )


def _list_collectives(t: torch.Tensor) -> bool:
    # CPU tensors go through gloo, whose older releases lack all_gather_into_tensor and
    # reduce_scatter_tensor. Keyed on the device because a group's backend may be
    # "cpu:gloo,cuda:nccl".
    return t.device.type == "cpu"


def _gather_cat(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    _, world_size = world(group)
    out = torch.empty((world_size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    if _list_collectives(x):
        # The list form writes straight into the (contiguous) row blocks of `out`.
        dist.all_gather(list(out.chunk(world_size)), x, group=group)
    else:
        dist.all_gather_into_tensor(out, x, group=group)
    return out


class _AllGatherWithGrad(Function):
    """Concatenate ``x`` from every rank along dim 0; backward sums gradients over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        ctx.rank, ctx.world_size = world(group)
        return _gather_cat(x.contiguous(), group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        n = grad.shape[0] // ctx.world_size
        if _list_collectives(grad):
            # No reduce_scatter: all-reduce the whole gradient and keep our slice (W x the
            # traffic, fine for CPU runs). On a copy: autograd may still hold the incoming buffer.
            total = grad.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
            return total[ctx.rank * n : (ctx.rank + 1) * n], None
        grad = grad.contiguous()
        out = torch.empty((n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def all_gather_with_grad(x: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """(W * B, ...) concatenation of every rank's ``x`` (B, ...), in rank order, with gradients.

    The backward pass returns to each rank the *sum* over ranks of the gradients flowing into its
    slice (a reduce-scatter). Returns ``x`` itself when not distributed.
    """
    if world(group)[1] == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)


def _global(rank: int, group: ProcessGroup) -> int:
    return dist.get_global_rank(group, rank) if group is not None else rank


def _exchange(*pairs: tuple[torch.Tensor, int, int], group: ProcessGroup) -> list[torch.Tensor]:
    """For each (tensor, to_rank, from_rank): send it to ``to_rank`` and receive a tensor of the
    same shape from ``from_rank``; all transfers are in flight together."""
    ops, received = [], []
    for send, to_rank, from_rank in pairs:
        recv = torch.empty_like(send)
        ops.append(dist.P2POp(dist.isend, send, _global(to_rank, group), group))
        ops.append(dist.P2POp(dist.irecv, recv, _global(from_rank, group), group))
        received.append(recv)
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


class _RingShiftWithGrad(Function):
    """Receive the left neighbour's tensor (sending ours right); backward sends gradients back left."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        rank, world_size = world(group)
        ctx.group, ctx.left, ctx.right = group, (rank - 1) % world_size, (rank + 1) % world_size
        return _exchange((x.contiguous(), ctx.right, ctx.left), group=group)[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Our output came from the left rank, so its gradient belongs there; the gradient for the
        # tensor we sent right arrives from the right rank.
        return _exchange((grad.contiguous(), ctx.left, ctx.right), group=ctx.group)[0], None


def ring_shift_with_grad(x: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """The tensor held by rank ``(rank - 1) % W``, differentiably (ours goes to ``rank + 1``)."""
    if world(group)[1] == 1:
        return x
    return _RingShiftWithGrad.apply(x, group)


class _BidirShiftWithGrad(Function):
    """Send one tensor right and one left; receive (from the left, from the right)."""

    @staticmethod
    def forward(ctx, to_right: torch.Tensor, to_left: torch.Tensor, group: ProcessGroup):
        rank, world_size = world(group)
        ctx.group, ctx.left, ctx.right = group, (rank - 1) % world_size, (rank + 1) % world_size
        from_left, from_right = _exchange(
            (to_right.contiguous(), ctx.right, ctx.left),
            (to_left.contiguous(), ctx.left, ctx.right),
            group=group,
        )
        return from_left, from_right

    @staticmethod
    def backward(ctx, grad_from_left: torch.Tensor, grad_from_right: torch.Tensor):
        # Each received tensor's gradient goes back where it came from; ours come back likewise:
        # the right rank holds the gradient of what we sent right, the left rank of what went left.
        grad_to_right, grad_to_left = _exchange(
            (grad_from_left.contiguous(), ctx.left, ctx.right),
            (grad_from_right.contiguous(), ctx.right, ctx.left),
            group=ctx.group,
        )
        return grad_to_right, grad_to_left, None


def bidir_shift_with_grad(
    to_right: torch.Tensor, to_left: torch.Tensor, group: ProcessGroup = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiably send ``to_right`` to rank + 1 and ``to_left`` to rank - 1 at once.

    Returns (the left neighbour's ``to_right``, the right neighbour's ``to_left``); used to walk a
    ring in both directions, halving the number of sequential hops.
    """
    if world(group)[1] == 1:
        return to_right, to_left
    return _BidirShiftWithGrad.apply(to_right, to_left, group)
