"""Single-process parity with open_clip's losses (which take the exponentiated scale)."""

import math

import pytest
import torch

from clipl.objectives import ClipLoss, SigLipLoss
from clipl.optim import OptimConfig, build_optimizer

open_clip_loss = pytest.importorskip("open_clip.loss")


def _features(n=16, d=12):
    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def test_clip_loss_matches_open_clip():
    img, txt = _features()
    scale = torch.tensor(math.log(1 / 0.07))
    ours = ClipLoss()(img, txt, scale)
    theirs = open_clip_loss.ClipLoss()(img, txt, scale.exp())
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_siglip_loss_matches_open_clip():
    img, txt = _features()
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    ours = SigLipLoss()(img, txt, scale, bias)
    theirs = open_clip_loss.SigLipLoss()(img, txt, scale.exp(), bias)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_cls", [ClipLoss, SigLipLoss])
def test_two_linear_towers_learn(loss_cls):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    # A learnable pairing: texts are a fixed linear view of the images plus noise.
    images = torch.randn(32, 10, generator=g)
    texts = images @ torch.randn(10, 7, generator=g) + 0.05 * torch.randn(32, 7, generator=g)
    towers = torch.nn.ModuleDict({"visual": torch.nn.Linear(10, 16), "text": torch.nn.Linear(7, 16)})
    towers.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    towers.logit_bias = torch.nn.Parameter(torch.tensor(-2.0))
    opt = build_optimizer(towers, OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0))
    loss_fn = loss_cls()
    losses = []
    for _ in range(60):
        img = torch.nn.functional.normalize(towers["visual"](images), dim=-1)
        txt = torch.nn.functional.normalize(towers["text"](texts), dim=-1)
        loss = loss_fn(img, txt, towers.logit_scale, towers.logit_bias)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
