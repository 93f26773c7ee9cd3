"""Shared pieces of the contrastive-accumulation tests (in-process, gloo and DeepSpeed workers)."""

from __future__ import annotations

import torch

OBJECTIVES = ("clip", "siglip")
DROPOUT = 0.25


def config(preset: str, objective: str, checkpointing: bool, dropout: bool):
    """A RunConfig for ``preset`` (tiny_vit / tiny_rn / micro*), fp32 on CPU."""
    from clipl.config import parse
    from clipl.config.schema import RunConfig
    from clipl.models import preset as model_preset

    model = model_preset(preset) if not preset.startswith("micro") else _micro(preset)
    overrides = ["trainer.accelerator=cpu", f"objective={objective}",
                 f"model.grad_checkpointing={str(checkpointing).lower()}"]
    if dropout and hasattr(model.image, "patch_dropout"):
        overrides.append("model.image.patch_dropout=0.5")  # FLIP: a random patch subset per image
    return parse(RunConfig(model=model), overrides)


def _micro(name: str):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "distributed"))
    import zero_worker

    return zero_worker.micro_config(name)


def _dropout_hook(module, inputs, output):
    # Dropout drawn with torch.rand (one number per element, in order), so masks drawn for k
    # micro-batches one after another are those of one draw for the whole batch.
    if not module.training:
        return output
    keep = (torch.rand(output.shape, device=output.device) >= DROPOUT).to(output.dtype)
    return output * keep / (1 - DROPOUT)


def module(preset: str, objective: str, checkpointing: bool, dropout: bool, *, accumulation: int, micro: int,
           world_size: int = 1, contrastive: bool = True, seed: int = 0):
    """A built CLIPModule (same weights for the same seed) with a batch plan of ``accumulation`` x ``micro``."""
    from clipl.distributed.plan import resolve_plan
    from clipl.module import CLIPModule

    plan = resolve_plan(accumulation * micro * world_size, micro, world_size, contrastive)
    m = CLIPModule(config(preset, objective, checkpointing, dropout), plan=plan)
    torch.manual_seed(seed)
    m.configure_model()
    if dropout:
        # Dropout after every residual block of the text tower (inside checkpointed blocks when on).
        blocks = m.model.text_tower.transformer.resblocks
        for block in blocks:
            block.register_forward_hook(_dropout_hook)
    m.train()
    return m


SIZES = {"tiny_vit": (64, 32, 49408), "tiny_rn": (64, 32, 49408), "micro_vit": (32, 16, 1000), "micro": (32, 16, 1000)}
"""preset -> (image size, context length, vocabulary)."""


def batch(n: int, seed: int = 0, preset: str = "tiny_vit") -> dict:
    image_size, context, vocab = SIZES[preset]
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab - 1, (n, context), generator=g)
    tokens[:, context // 2] = vocab - 1  # end of text: the text tower pools there
    tokens[:, context // 2 + 1:] = 0
    return {"image": torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g),
            "text": tokens}


def step(m, batch: dict, backward=None, rng_seed: int = 123) -> dict:
    """One step's forwards and backwards (no optimiser step): loss and every parameter's gradient."""
    torch.manual_seed(rng_seed)  # the dropout draws start from the same generator state
    for p in m.parameters():
        p.grad = None
    out = m.forward_backward(batch, backward or (lambda t, last: t.backward()), mask="none")
    grads = {n: p.grad.detach().clone() for n, p in m.model.named_parameters() if p.grad is not None}
    return {"loss": out.loss, "grads": grads, "finite": bool(out.finite)}


def keep_graph_step(m, batch: dict, accumulation: int, rng_seed: int = 123) -> dict:
    """The whole batch's step with its forward run micro-batch by micro-batch, every graph kept.

    Exactly one step on the whole batch (one loss over all features, one backward), drawing dropout
    masks in the order the accumulated step draws them (image then text tower, one micro-batch after
    another), at k times the activation memory: the reference for steps with dropout on.
    """
    from clipl.models.clip import CLIPOutput

    torch.manual_seed(rng_seed)
    for p in m.parameters():
        p.grad = None
    n = batch["text"].shape[0] // accumulation
    outs = [m._encode({k: v[i * n:(i + 1) * n] for k, v in batch.items()}) for i in range(accumulation)]
    loss = m.compute_loss(CLIPOutput(torch.cat([o.image_features for o in outs]),
                                     torch.cat([o.text_features for o in outs]), outs[0].logit_scale,
                                     outs[0].logit_bias))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in m.model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), "grads": grads, "finite": bool(torch.isfinite(loss))}


def max_grad_diff(a: dict, b: dict) -> float:
    return max(float((a["grads"][k] - b["grads"][k]).abs().max()) for k in b["grads"])


def assert_same_step(got: dict, want: dict, what: str, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    torch.testing.assert_close(got["loss"], want["loss"], rtol=rtol, atol=atol, msg=lambda m: f"{what} loss: {m}")
    assert set(got["grads"]) == set(want["grads"]) and want["grads"], what
    for name, ref in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], ref, rtol=rtol, atol=atol, msg=lambda m: f"{what} {name}: {m}")


# Lightning DDP check (tests/distributed/ddp_accum_script.py): 2 ranks x 2 micro-batches of 4.
DDP_GLOBAL, DDP_MICRO, DDP_STEPS = 16, 4, 2


def ddp_module(plan):
    """The CLIPModule both sides of the Lightning DDP check train (same weights, lr 1e-4, fused AdamW)."""
    from clipl.config import parse
    from clipl.config.schema import RunConfig
    from clipl.module import CLIPModule

    cfg = parse(RunConfig(model=_micro("micro_vit")), ["trainer.accelerator=cpu", "trainer.gradient_clip_val=1.0",
                                                       "optim.lr=1e-4", "optim.warmup_steps=0",
                                                       "optim.schedule=constant"])
    module = CLIPModule(cfg, plan=plan)
    torch.manual_seed(0)
    module.configure_model()
    return module


def ddp_batches() -> list[dict]:
    return [batch(DDP_GLOBAL, seed=10 + s, preset="micro_vit") for s in range(DDP_STEPS)]
