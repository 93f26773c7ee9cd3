"""Parity with open_clip 3.3 (the reference implementation) for the nine OpenAI presets, fp32 CPU.

open_clip's randomly initialised model is loaded into clipl's strictly, with no renaming, and both
encoders must agree to 1e-5 of the output scale; then clipl's (re-randomised) weights go back.
"""

from __future__ import annotations

import gc

import pytest
import torch

from clipl.models import build_model, list_presets

from zoo_reference import BIG, OPENCLIP_NAMES, random_tokens, randomize_batchnorm_

open_clip = pytest.importorskip("open_clip")

REL_TOL = 1e-5


def _params():
    for name in OPENCLIP_NAMES:
        marks = [pytest.mark.slow] if name in BIG else []
        yield pytest.param(name, marks=marks, id=name)


def _assert_close(ref: torch.Tensor, out: torch.Tensor, what: str) -> None:
    scale = ref.abs().max().item()
    diff = (ref - out).abs().max().item()
    assert scale > 0 and diff < REL_TOL * scale, f"{what}: max abs diff {diff:.3g} vs output scale {scale:.3g}"


@torch.no_grad()
def _perturb_(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 1e-2)


def _encode(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_every_openai_preset_has_a_reference():
    assert set(OPENCLIP_NAMES) <= set(list_presets())


@pytest.mark.parametrize("name", list(_params()))
def test_parity_with_open_clip(name):
    torch.manual_seed(0)
    ref = open_clip.create_model(OPENCLIP_NAMES[name], pretrained=None, force_quick_gelu=True).eval()
    randomize_batchnorm_(ref)
    big = name in BIG
    if not big:  # nonzero attention/LN biases etc., not just the init pattern (spared for big ones)
        _perturb_(ref, seed=3)
    ours = build_model(name).eval()

    ref_sd = ref.state_dict()
    assert list(ours.state_dict()) == list(ref_sd), "state-dict keys (and order) must be open_clip's"
    ours.load_state_dict(ref_sd, strict=True)

    batch = 1 if big else 2
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, ours.image_size, ours.image_size, generator=g)
    tokens = random_tokens(batch, ours.context_length, seed=2)
    ref_img, ref_txt = _encode(ref, images, tokens)
    img, txt = _encode(ours, images, tokens)
    assert img.shape == ref_img.shape and txt.shape == ref_txt.shape
    _assert_close(ref_img, img, f"{name} encode_image")
    _assert_close(ref_txt, txt, f"{name} encode_text")

    # Reverse: clipl's own (freshly perturbed) weights load into open_clip strictly and unchanged.
    if not big:
        _perturb_(ours, seed=4)
    ours_sd = ours.state_dict()
    ref.load_state_dict(ours_sd, strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(value, ours_sd[key]), key
    del ref, ours, ref_sd, ours_sd
    gc.collect()


def test_parity_in_train_mode_tiny_rn_batch_stats():
    """BatchNorm in training mode (batch statistics) matches open_clip's ModifiedResNet too."""
    from open_clip.modified_resnet import ModifiedResNet as RefResNet

    torch.manual_seed(0)
    model = build_model("tiny_rn")
    ref = RefResNet(layers=[1, 1, 1, 1], output_dim=128, heads=4, image_size=64, width=16)
    randomize_batchnorm_(ref)
    model.visual.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 3, 64, 64)
    _assert_close(ref.train()(x), model.visual.train()(x), "tiny_rn visual (train mode)")
    for a, b in zip(ref.buffers(), model.visual.buffers()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_tiny_vit_parity_per_activation(act):
    """The act field selects nn.GELU or QuickGELU exactly as open_clip's quick_gelu flag does."""
    import dataclasses

    from open_clip.model import CLIP

    from clipl.models import preset

    cfg = preset("tiny_vit")
    cfg = dataclasses.replace(
        cfg, image=dataclasses.replace(cfg.image, act=act), text=dataclasses.replace(cfg.text, act=act)
    )
    torch.manual_seed(0)
    ref = CLIP(
        embed_dim=128,
        vision_cfg=dict(image_size=64, patch_size=8, width=128, layers=2, head_width=64),
        text_cfg=dict(context_length=32, vocab_size=49408, width=128, heads=2, layers=2),
        quick_gelu=act == "quick_gelu",
    ).eval()
    _perturb_(ref, seed=5)
    ours = build_model(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    images, tokens = torch.randn(3, 3, 64, 64), random_tokens(3, 32, seed=6)
    for r, o, what in zip(_encode(ref, images, tokens), _encode(ours, images, tokens), ["image", "text"]):
        _assert_close(r, o, f"tiny_vit {act} {what}")
