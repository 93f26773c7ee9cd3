"""Narrow fixes for DeepSpeed's weight broadcasts of 0-dim parameters (CLIP's logit_scale).

DeepSpeed 0.19.x broadcasts parameters as ``p.data.view(torch.uint8)``. Viewing as a smaller dtype
needs at least one dimension, so a scalar parameter fails with "self.dim() cannot be 0 to view Float
as Byte", on every device, in two places every clipl run reaches:

- ``DeepSpeedEngine._broadcast_model`` inside ``deepspeed.initialize`` (ZeRO-1/2; ZeRO-3 when the
  model was not built under ``zero.Init``);
- ``zero.Init._zero_init_param`` when ZeRO-3 partitions a parameter (under ``zero.Init``, as
  Lightning's ``configure_model`` does, or at ``deepspeed.initialize`` otherwise).

CLIP's ``logit_scale`` (and SigLIP's ``logit_bias``) are 0-dim by OpenAI's layout, so their shape
must stay. Both patches broadcast scalars through a 1-element view of the same storage and leave
every other parameter to DeepSpeed's own code. They are idempotent and harmless once DeepSpeed
handles scalars itself.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

_PATCHED_ATTR = "_clipl_scalar_safe"


def _hide_scalars(module: nn.Module) -> list[tuple[nn.Module, dict]]:
    """Remove 0-dim parameters from every submodule; returns what restore needs (order preserved)."""
    saved = []
    for mod in module.modules():
        params = mod._parameters
        if any(p is not None and p.dim() == 0 for p in params.values()):
            original = dict(params)
            params.clear()
            params.update({k: p for k, p in original.items() if p is None or p.dim() != 0})
            saved.append((mod, original))
    return saved


def _restore(saved: list[tuple[nn.Module, dict]]) -> None:
    for mod, original in saved:
        mod._parameters.clear()
        mod._parameters.update(original)


def patch_deepspeed_scalar_broadcast() -> None:
    """Make DeepSpeed (ZeRO 1-3) accept models with 0-dim parameters (see module docstring)."""
    _patch_engine_broadcast()
    _patch_zero3_init_param()


def _patch_zero3_init_param() -> None:
    from deepspeed import comm as dist
    from deepspeed.runtime.zero.partition_parameters import Init

    original = Init._zero_init_param
    if getattr(original, _PATCHED_ATTR, False):
        return

    @functools.wraps(original)
    def zero_init_param(self, param) -> None:
        if param.dim() != 0:
            return original(self, param)
        # DeepSpeed's own steps for one parameter, with a broadcastable view of the scalar.
        self._convert_to_deepspeed_param(param)
        group = self.get_partition_dp_group(param)
        src = 0 if dist.get_world_group() == group else dist.get_global_rank(group, 0)
        dist.broadcast(param.data.view(1).view(torch.uint8), src, group)
        param.partition()

    setattr(zero_init_param, _PATCHED_ATTR, True)
    Init._zero_init_param = zero_init_param


def _patch_engine_broadcast() -> None:
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._broadcast_model
    if getattr(original, _PATCHED_ATTR, False):
        return

    @functools.wraps(original)
    def broadcast_model(self) -> None:
        if self.dist_backend is None:
            return original(self)
        from deepspeed import comm as dist
        from deepspeed.utils import groups

        scalars = [p for p in self.module.parameters() if p.dim() == 0]
        saved = _hide_scalars(self.module)
        try:
            original(self)
        finally:
            _restore(saved)
        for p in scalars:
            if getattr(p, "ds_status", None) is not None and p.ds_status.name != "AVAILABLE":
                continue  # partitioned by ZeRO-3: nothing replicated to synchronise
            # view(1) shares the scalar's storage, so the broadcast writes into the parameter itself.
            dist.broadcast(p.data.view(1).view(torch.uint8), groups._get_broadcast_src_rank(),
                           group=self.seq_data_parallel_group)

    setattr(broadcast_model, _PATCHED_ATTR, True)
    DeepSpeedEngine._broadcast_model = broadcast_model
