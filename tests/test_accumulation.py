"""Contrastive accumulation (clipl.accumulation through CLIPModule.forward_backward): k micro-batches of
one step give the loss and the gradient of every parameter of one step on the whole batch.

In-process here; with 2 gloo processes and against BatchNorm (ResNet) towers in
tests/distributed/test_accumulation_ddp.py; under DeepSpeed ZeRO in test_accumulation_deepspeed.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import accum_cases as cases  # noqa: E402


CASES = [("micro_vit", objective, ckpt, dropout) for objective in cases.OBJECTIVES for ckpt in (False, True)
         for dropout in (False, True)] + [("tiny_vit", "siglip", True, True), ("tiny_vit", "clip", False, False)]


@pytest.mark.parametrize("preset, objective, checkpointing, dropout", CASES,
                         ids=[f"{p}-{o}-{'ckpt' if c else 'plain'}-{'dropout' if d else 'nodrop'}" for p, o, c, d in CASES])
def test_accumulated_step_equals_whole_batch_vit(preset, objective, checkpointing, dropout):
    batch = cases.batch(8, seed=1, preset=preset)
    if dropout:
        # The whole batch's step drawing the masks in the accumulated step's order (see keep_graph_step):
        # a single forward over all 8 would draw the text tower's masks after all images' patches.
        whole = cases.keep_graph_step(cases.module(preset, objective, checkpointing, dropout, accumulation=1,
                                                   micro=8), batch, accumulation=4)
    else:
        whole = cases.step(cases.module(preset, objective, checkpointing, dropout, accumulation=1, micro=8), batch)
    accumulated = cases.step(cases.module(preset, objective, checkpointing, dropout, accumulation=4, micro=2), batch)
    cases.assert_same_step(accumulated, whole, f"{preset} {objective} ckpt={checkpointing} dropout={dropout}")
    if objective == "siglip":
        assert whole["grads"]["logit_bias"].abs().item() > 0  # the bias's gradient is compared too


def test_without_rng_replay_dropout_steps_differ(monkeypatch):
    """The check above can fail: recomputing a micro-batch with other dropout masks changes the gradients."""
    from clipl import accumulation

    batch = cases.batch(8, seed=1, preset="micro_vit")
    whole = cases.keep_graph_step(cases.module("micro_vit", "clip", False, True, accumulation=1, micro=8), batch, 4)
    monkeypatch.setattr(accumulation._RNG, "set", lambda self, state: None)
    unreplayed = cases.step(cases.module("micro_vit", "clip", False, True, accumulation=4, micro=2), batch)
    torch.testing.assert_close(unreplayed["loss"], whole["loss"], rtol=1e-5, atol=1e-6)  # the no-grad pass is right
    assert cases.max_grad_diff(unreplayed, whole) > 1e-3


def test_batchnorm_statistics_are_updated_once_per_micro_batch():
    """ResNet towers: the no-grad pass updates BatchNorm's running statistics; recomputation does not."""
    batch = cases.batch(8, seed=2, preset="tiny_rn")
    module = cases.module("tiny_rn", "clip", False, False, accumulation=2, micro=4)
    ref = cases.module("tiny_rn", "clip", False, False, accumulation=2, micro=4)
    with torch.no_grad():  # two plain training-mode forwards, one per micro-batch
        for micro in (slice(0, 4), slice(4, 8)):
            ref._encode({"image": batch["image"][micro], "text": batch["text"][micro]})
    cases.step(module, batch)
    bn = {k: v for k, v in module.model.state_dict().items() if "running_" in k or "num_batches" in k}
    assert bn and all(torch.equal(v, ref.model.state_dict()[k]) for k, v in bn.items())


def test_plain_accumulation_averages_micro_batch_losses():
    """trainer.contrastive_accumulation=false: each micro-batch's own loss; the step is their average."""
    batch = cases.batch(8, seed=3, preset="micro_vit")
    whole = cases.step(cases.module("micro_vit", "clip", False, False, accumulation=1, micro=8), batch)
    plain = cases.step(cases.module("micro_vit", "clip", False, False, accumulation=2, micro=4, contrastive=False),
                       batch)
    halves = [cases.step(cases.module("micro_vit", "clip", False, False, accumulation=1, micro=4),
                         {k: v[s] for k, v in batch.items()}) for s in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(plain["loss"], (halves[0]["loss"] + halves[1]["loss"]) / 2, rtol=1e-5, atol=1e-6)
    for name, grad in plain["grads"].items():
        torch.testing.assert_close(grad, (halves[0]["grads"][name] + halves[1]["grads"][name]) / 2,
                                   rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # Fewer negatives per loss: a different (lower) loss than the whole batch's, and other gradients.
    assert plain["loss"] < whole["loss"] - 1e-3
    assert cases.max_grad_diff(plain, whole) > 1e-3


def test_a_batch_that_does_not_fit_the_plan_is_refused():
    module = cases.module("micro_vit", "clip", False, False, accumulation=4, micro=2)
    with pytest.raises(ValueError, match="micro_batch_size=2 x 4 accumulation"):
        cases.step(module, cases.batch(6, preset="micro_vit"))


def _run_quickstart(tmp_path, name: str, *overrides: str) -> dict:
    """`lightning run recipes/quickstart.py model=tiny_vit ...` for 3 steps; the final weights."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / name
    small = ["data.shapes.train_size=256", "data.shapes.val_size=64", "data.shapes.eval_size=64",
             "data.shapes.samples_per_shard=64", f"data.shapes.cache_dir={tmp_path / 'shapes'}", "data.num_workers=0",
             "eval.zeroshot=[]", "eval.linear_probe=[]", "logging.backend=csv", "trainer.enable_progress_bar=false",
             "trainer.enable_model_summary=false"]
    cmd = [str(Path(sys.executable).parent / "lightning"), "run", "recipes/quickstart.py", "model=tiny_vit",
           "trainer.global_batch_size=64", "trainer.max_steps=3", f"out_dir={out}", *small, *overrides]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


@pytest.mark.slow  # three CLI runs of the quickstart (tiny_vit, 3 steps of 64): ~1-2 minutes on 2 cores
def test_quickstart_accumulated_weights_equal_one_micro_batch(tmp_path):
    """Issue #14's end-to-end check: global 64 as 4 micro-batches of 16 == one of 64 after 3 optimiser steps
    (to 1e-5); with trainer.contrastive_accumulation=false the weights differ."""
    whole = _run_quickstart(tmp_path, "whole", "trainer.micro_batch_size=64")
    accumulated = _run_quickstart(tmp_path, "accumulated", "trainer.micro_batch_size=16")
    plain = _run_quickstart(tmp_path, "plain", "trainer.micro_batch_size=16", "trainer.contrastive_accumulation=false")
    for name, want in whole.items():
        torch.testing.assert_close(accumulated[name], want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert max(float((plain[k] - whole[k]).abs().max()) for k in whole) > 1e-4  # measured 4.6e-4 (accumulated: 5.6e-7)


def test_locked_image_tower_accumulates_like_the_whole_batch():
    """LiT (optim.lock_image): the frozen tower's features carry no graph; the rest still matches."""
    batch = cases.batch(8, seed=5, preset="micro_vit")

    def locked(accumulation, micro):
        m = cases.module("micro_vit", "clip", False, False, accumulation=accumulation, micro=micro)
        m.model.lock_image_tower()
        return m

    whole, accumulated = cases.step(locked(1, 8), batch), cases.step(locked(4, 2), batch)
    assert not any(name.startswith("visual.") for name in whole["grads"])
    cases.assert_same_step(accumulated, whole, "locked image tower")
