"""ClipLoss / SigLipLoss against naive full-matrix references written out here."""

import math

import pytest
import torch

from clipl.objectives import (
    ClipLoss,
    ClipLossConfig,
    SigLipLoss,
    SigLipLossConfig,
    effective_logit_scale,
)


def _log_softmax(x, dim):
    # Explicit, numerically stable log-softmax: x - max - log(sum(exp(x - max))).
    m = x.max(dim=dim, keepdim=True).values
    return x - m - torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))


def _log_sigmoid(x):
    # log(1 / (1 + exp(-x))) = -(max(-x, 0) + log(1 + exp(-|x|))).
    return -(torch.clamp(-x, min=0) + torch.log1p(torch.exp(-x.abs())))


def reference_clip(img, txt, logit_scale):
    t = torch.exp(torch.clamp(logit_scale, max=math.log(100.0)))
    logits = t * img @ txt.T
    diag = torch.arange(img.shape[0])
    i2t = -_log_softmax(logits, 1)[diag, diag].mean()
    t2i = -_log_softmax(logits, 0)[diag, diag].mean()
    return (i2t + t2i) / 2


def reference_siglip(img, txt, logit_scale, logit_bias):
    n = img.shape[0]
    logits = torch.exp(logit_scale) * img @ txt.T + logit_bias
    z = -torch.ones(n, n, dtype=img.dtype)
    z[torch.arange(n), torch.arange(n)] = 1
    return -_log_sigmoid(z * logits).sum() / n


def _features(n=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    # Texts correlated with images so the loss is not at its random-init value.
    txt = torch.nn.functional.normalize(img + 0.7 * torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def _grads(fn, img, txt, *scalars):
    leaves = [t.clone().requires_grad_(True) for t in (img, txt, *scalars)]
    loss = fn(*leaves)
    return loss, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("logit_scale", [math.log(1 / 0.07), 1.0, 4.0])
def test_clip_loss_matches_reference(logit_scale):
    img, txt = _features()
    scale = torch.tensor(logit_scale)
    loss, grads = _grads(ClipLoss(ClipLossConfig()), img, txt, scale)
    ref, ref_grads = _grads(reference_clip, img.double(), txt.double(), scale.double())
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, ref.float(), rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "logit_scale,logit_bias,tol",
    [
        (math.log(10.0), -10.0, 1e-6),
        (2.0, -1.5, 1e-6),
        (2.6, 0.3, 1e-6),
        # t = exp(4.5) = 90: fp32 logits carry ~90 * 6e-8 absolute rounding, so the bound scales.
        (4.5, 0.3, 1e-5),
    ],
)
def test_siglip_loss_matches_reference(logit_scale, logit_bias, tol):
    img, txt = _features()
    scale, bias = torch.tensor(logit_scale), torch.tensor(logit_bias)
    loss, grads = _grads(SigLipLoss(SigLipLossConfig()), img, txt, scale, bias)
    ref, ref_grads = _grads(reference_siglip, img.double(), txt.double(), scale.double(), bias.double())
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, ref.float(), rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r.float(), rtol=tol, atol=tol)


def test_clip_loss_bias_has_no_effect_but_stays_in_graph():
    img, txt = _features()
    scale, bias = torch.tensor(2.0), torch.tensor(-3.0, requires_grad=True)
    loss = ClipLoss()(img, txt, scale, bias)
    torch.testing.assert_close(loss, ClipLoss()(img, txt, scale))
    (g,) = torch.autograd.grad(loss, bias)
    assert abs(g.item()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_fp32_loss(dtype):
    img, txt = _features()
    img_lp, txt_lp = img.to(dtype), txt.to(dtype)
    scale = torch.tensor(2.5, dtype=dtype)
    clip = ClipLoss()(img_lp, txt_lp, scale)
    sig = SigLipLoss()(img_lp, txt_lp, scale, torch.tensor(-10.0, dtype=dtype))
    assert clip.dtype == torch.float32 and sig.dtype == torch.float32
    # Computed in fp32 from the rounded inputs: equal to the fp32 loss of those same values.
    torch.testing.assert_close(clip, ClipLoss()(img_lp.float(), txt_lp.float(), scale.float()))
    img_g = img_lp.clone().requires_grad_(True)
    ClipLoss()(img_g, txt_lp, scale).backward()
    assert img_g.grad.dtype == dtype and torch.isfinite(img_g.grad.float()).all()


def test_autocast_does_not_lower_the_loss_precision():
    img, txt = _features(n=32, d=64)
    scale, bias = torch.tensor(2.6), torch.tensor(-3.0)
    for loss_fn in (ClipLoss(), SigLipLoss()):
        fp32 = loss_fn(img, txt, scale, bias)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss_fn(img, txt, scale, bias)
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, fp32, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("objective", ["clip", "siglip"])
def test_logit_scale_is_clamped_at_100(objective):
    img, txt = _features()
    cfg = ClipLossConfig() if objective == "clip" else SigLipLossConfig(max_logit_scale=100.0)
    loss_fn = ClipLoss(cfg) if objective == "clip" else SigLipLoss(cfg)
    bias = torch.tensor(-10.0)
    param = torch.nn.Parameter(torch.tensor(math.log(100.0) + 1.5))
    loss = loss_fn(img, txt, param, bias)
    loss.backward()
    assert param.grad.item() == 0.0  # clamped: no gradient pushes it further
    assert param.item() == pytest.approx(math.log(100.0) + 1.5)  # never clamped in place
    at_100 = loss_fn(img, txt, torch.tensor(math.log(100.0)), bias)
    torch.testing.assert_close(loss.detach(), at_100)
    assert effective_logit_scale(torch.tensor(50.0), 100.0).item() == pytest.approx(100.0)
    assert effective_logit_scale(torch.tensor(1.0), 100.0).item() == pytest.approx(math.e)
    # Below the bound the parameter does get a gradient.
    below = torch.nn.Parameter(torch.tensor(2.0))
    loss_fn(img, txt, below, bias).backward()
    assert below.grad.abs().item() > 0


def test_siglip_without_clamp_by_default():
    img, txt = _features()
    bias = torch.tensor(-10.0)
    big = torch.tensor(math.log(100.0) + 0.5)
    unclamped = SigLipLoss()(img, txt, big, bias)
    torch.testing.assert_close(unclamped, reference_siglip(img, txt, big, bias))


def test_bad_inputs_raise_clear_errors():
    img, txt = _features()
    with pytest.raises(ValueError, match="logit_bias"):
        SigLipLoss()(img, txt, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        ClipLoss()(img, txt[:5], torch.tensor(1.0))
