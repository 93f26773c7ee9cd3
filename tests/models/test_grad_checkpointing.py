"""Activation checkpointing: identical outputs and gradients, fewer saved activations, for every tower."""

from __future__ import annotations

import copy

import pytest
import torch

from clipl.models import build_model

from zoo_reference import random_tokens


def _saved_bytes(fn, model) -> tuple[torch.Tensor, int]:
    """Run ``fn``; return (its output, bytes of distinct non-parameter storages saved for backward)."""
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def _towers():
    torch.manual_seed(0)
    rn, vit = build_model("tiny_rn"), build_model("tiny_vit")
    images = torch.randn(4, 3, 64, 64)
    tokens = random_tokens(4, 32)
    return [
        pytest.param(rn, lambda m: m.encode_image(images), id="modified_resnet"),
        pytest.param(vit, lambda m: m.encode_image(images), id="vit"),
        pytest.param(vit, lambda m: m.encode_text(tokens), id="text_transformer"),
    ]


@pytest.mark.parametrize("model, run", _towers())
def test_checkpointing_same_outputs_grads_less_memory(model, run):
    plain, ckpt = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    ckpt.set_grad_checkpointing(True)
    out_plain, bytes_plain = _saved_bytes(lambda: run(plain), plain)
    out_ckpt, bytes_ckpt = _saved_bytes(lambda: run(ckpt), ckpt)
    weights = torch.randn_like(out_plain)
    (out_plain * weights).sum().backward()
    (out_ckpt * weights).sum().backward()

    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    grads = 0
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            grads += 1
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
        else:
            assert q.grad is None, name
    assert grads > 0
    # BatchNorm running statistics are updated once per step, not again by the recomputation.
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(a, b), name
    # Checkpointing keeps only the block inputs alive: far fewer saved bytes.
    assert bytes_ckpt < 0.3 * bytes_plain, (bytes_ckpt, bytes_plain)


def test_resnet_checkpointing_covers_stem_blocks_and_attnpool():
    """With checkpointing on, the ResNet tower saves only the inputs of its stem, blocks and pool."""
    torch.manual_seed(0)
    visual = build_model("tiny_rn").visual.train()
    visual.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    inputs = {x.untyped_storage().data_ptr()}
    regions = [b for stage in visual.stages() for b in stage] + [visual.attnpool]
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.add(a[0].untyped_storage().data_ptr())) for m in regions]
    saved: set[int] = set()

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        visual(x).sum().backward()
    for h in hooks:
        h.remove()
    assert saved == inputs and len(saved) == len(regions) + 1


def test_config_flag_and_eval_mode():
    model = build_model("tiny_rn", grad_checkpointing=True)
    assert model.visual.grad_checkpointing and model.transformer.grad_checkpointing
    with torch.no_grad():  # no autograd: checkpointing is bypassed, outputs unchanged
        x = torch.randn(1, 3, 64, 64)
        a = model.eval().encode_image(x)
        model.set_grad_checkpointing(False)
        torch.testing.assert_close(model.encode_image(x), a, rtol=0, atol=0)
