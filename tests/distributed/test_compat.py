"""The DeepSpeed 0-dim parameter patch: hides and restores scalars without disturbing the module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipl.distributed.compat import _hide_scalars, _restore, patch_deepspeed_scalar_broadcast


def test_hide_and_restore_keeps_order_and_identity():
    model = nn.Sequential(nn.Linear(2, 2))
    model.scale = nn.Parameter(torch.tensor(2.5))
    model[0].gain = nn.Parameter(torch.tensor(1.0))
    before = [(n, p) for n, p in model.named_parameters()]
    saved = _hide_scalars(model)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    _restore(saved)
    after = [(n, p) for n, p in model.named_parameters()]
    assert [n for n, _ in after] == [n for n, _ in before]
    assert all(a is b for (_, a), (_, b) in zip(after, before))
    assert list(model.state_dict()) == ["scale", "0.weight", "0.bias", "0.gain"]


def test_scalar_view_shares_storage():
    p = nn.Parameter(torch.tensor(3.0))
    p.data.view(1).view(torch.uint8).copy_(torch.tensor([7.0]).view(torch.uint8))
    assert p.item() == 7.0
    with pytest.raises(RuntimeError, match="dim"):
        p.data.view(torch.uint8)  # what DeepSpeed 0.19 does, and why the patch exists


def test_patch_is_idempotent():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.partition_parameters import Init

    patch_deepspeed_scalar_broadcast()
    first = (DeepSpeedEngine._broadcast_model, Init._zero_init_param)
    patch_deepspeed_scalar_broadcast()
    assert (DeepSpeedEngine._broadcast_model, Init._zero_init_param) == first
    assert first[0]._clipl_scalar_safe and first[1]._clipl_scalar_safe
