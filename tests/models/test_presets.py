"""Every registered preset builds; OpenAI parameter counts; CLIPModel contract; bad-input errors."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipl.models import ModelConfig, build_model, build_tower, list_presets, preset
from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.vit import ViTConfig
from clipl.models.clip import CLIPModel, CLIPOutput

from zoo_reference import OPENAI_PARAMS_M, random_tokens

TINY = ["tiny_vit", "tiny_rn"]


def _meta_model(name: str) -> CLIPModel:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return build_model(name)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_with_consistent_names(name):
    model = _meta_model(name)
    assert isinstance(preset(name), ModelConfig)
    params = dict(model.named_parameters())
    sd_keys = set(model.state_dict())
    # Optimisers and DeepSpeed see the same names as checkpoints do.
    assert set(params) == sd_keys - {k for k, _ in model.named_buffers()}
    assert model.no_weight_decay() <= set(params)
    assert model.visual.output_dim == model.text_tower.output_dim == preset(name).embed_dim
    assert model.logit_scale.shape == () and model.logit_bias is None


@pytest.mark.parametrize("name", sorted(OPENAI_PARAMS_M))
def test_parameter_count_equals_openai(name):
    n = sum(p.numel() for p in _meta_model(name).parameters())
    assert round(n / 1e6, 2) == pytest.approx(OPENAI_PARAMS_M[name], abs=0.005)


@pytest.mark.parametrize("name", sorted(OPENAI_PARAMS_M))
def test_openai_state_dict_layout(name):
    keys = list(_meta_model(name).state_dict())
    top = {k.split(".")[0] for k in keys}
    assert top == {"visual", "transformer", "token_embedding", "positional_embedding", "ln_final",
                   "text_projection", "logit_scale"}
    assert "transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "transformer.resblocks.0.attn.out_proj.weight" in keys


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name)
    assert model.image_size == 64 and model.context_length == 32
    images = torch.randn(4, 3, 64, 64)
    tokens = random_tokens(4, 32)
    out = model(images, tokens)
    assert isinstance(out, CLIPOutput)
    assert out.image_features.shape == out.text_features.shape == (4, 128)
    assert out.image_features.dtype == torch.float32
    torch.testing.assert_close(out.image_features.norm(dim=-1), torch.ones(4))
    assert out.logit_scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.07)).item())
    logits = out.logit_scale.exp() * out.image_features @ out.text_features.T
    labels = torch.arange(4)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_learns(name):
    """A few AdamW steps on a fixed batch lower the contrastive loss."""
    torch.manual_seed(0)
    model = build_model(name)
    images, tokens = torch.randn(8, 3, 64, 64), random_tokens(8, 32, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.arange(8)
    losses = []
    for _ in range(8):
        out = model(images, tokens)
        logits = out.logit_scale.exp() * out.image_features @ out.text_features.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_unknown_preset_lists_close_names():
    with pytest.raises(KeyError, match="vit_b32"):
        build_model("vit_b23")
    with pytest.raises(KeyError, match="rn50x4"):
        preset("rn50x5")


def test_overrides_and_logit_bias():
    model = build_model("tiny_vit", init_logit_scale=2.3, init_logit_bias=-10.0)
    assert model.logit_scale.item() == pytest.approx(2.3)
    assert model.logit_bias.item() == pytest.approx(-10.0)
    assert {"logit_scale", "logit_bias"} <= model.no_weight_decay()
    with pytest.raises(KeyError, match="embed_dim"):
        preset("tiny_vit", embed_dimm=3)


def test_no_weight_decay_names():
    nwd = build_model("tiny_vit").no_weight_decay()
    assert nwd == {"logit_scale", "visual.class_embedding", "visual.positional_embedding",
                   "positional_embedding", "token_embedding.weight"}
    assert build_model("tiny_rn").no_weight_decay() >= {"visual.attnpool.positional_embedding"}


def test_hoisted_text_tower_survives_conversion_and_copy():
    torch.manual_seed(0)
    model = build_model("tiny_vit").eval()
    tokens = random_tokens(2, 32)
    # The reference is the same weights converted without a deepcopy: fp64 against fp64, so the
    # comparison is exact up to summation order (fp32 against fp64 differs by ~1e-6 on some CPUs).
    fresh64 = CLIPModel.from_config(model.config).eval()
    fresh64.load_state_dict(model.state_dict())
    ref = fresh64.double().encode_text(tokens)
    model64 = copy.deepcopy(model).double()
    out = model64.encode_text(tokens)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.float(), model.encode_text(tokens), rtol=1e-4, atol=1e-5)
    # the copy is independent: zeroing its projection leaves the original untouched
    with torch.no_grad():
        model64.text_projection.zero_()
    assert model64.encode_text(tokens).abs().max() == 0
    assert model.encode_text(tokens).abs().max() > 0


def test_half_precision_layernorm_runs_in_fp32():
    torch.manual_seed(0)
    model = build_model("tiny_vit").eval()
    images, tokens = torch.randn(2, 3, 64, 64), random_tokens(2, 32)
    ref = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
    model = model.to(torch.bfloat16)
    out = model.encode_image(images.bfloat16(), normalize=True), model.encode_text(tokens, normalize=True)
    for r, o in zip(ref, out):
        assert o.dtype == torch.float32
        assert (r - o).abs().max() < 0.05


def test_locking_towers():
    model = build_model("tiny_vit")
    model.lock_image_tower(unlocked_groups=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.")}
    assert trainable == {"visual.proj"}
    model.lock_text_tower(unlocked_groups=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("visual.")}
    assert "text_projection" in trainable and "ln_final.weight" in trainable
    assert "transformer.resblocks.1.mlp.c_fc.weight" in trainable
    assert "transformer.resblocks.0.mlp.c_fc.weight" not in trainable
    assert "token_embedding.weight" not in trainable and model.logit_scale.requires_grad
    model.lock_text_tower(0)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith(("visual.", "logit")))
    with pytest.raises(ValueError, match="unlocked_groups"):
        model.lock_image_tower(unlocked_groups=99)


def test_locking_resnet_freezes_bn_stats():
    model = build_model("tiny_rn")
    model.lock_image_tower(unlocked_groups=1, freeze_bn_stats=True)
    for n, p in model.visual.named_parameters():
        assert p.requires_grad == n.startswith("attnpool."), n
    model.train()
    before = model.visual.layer1[0].bn1.running_mean.clone()
    model.encode_image(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, model.visual.layer1[0].bn1.running_mean)
    assert not model.visual.bn1.training and model.visual.attnpool.training


@pytest.mark.parametrize(
    "cfg, match",
    [
        (ViTConfig(image_size=64, patch_size=7, width=64, layers=1), "multiple of patch_size"),
        (ViTConfig(image_size=64, patch_size=8, width=96, layers=1, heads=5), "image.heads"),
        (ModifiedResNetConfig(image_size=70, width=16), "multiple of 32"),
        (ModifiedResNetConfig(image_size=64, width=16, layers=[1, 1, 1]), "exactly 4 stages"),
        (TextTransformerConfig(width=64, layers=1, heads=3), "text.heads"),
    ],
)
def test_bad_tower_config_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_tower(cfg, 32)


@pytest.mark.parametrize("cls, field", [(ViTConfig, "image.act"), (TextTransformerConfig, "text.act")])
def test_unknown_activation_is_refused_when_the_config_is_made(cls, field):
    with pytest.raises(ValueError, match=rf"{field}='relu6' is not a known activation"):
        cls(width=64, layers=1, act="relu6")


def test_bad_model_config_errors():
    with pytest.raises(ValueError, match="ModelConfig.text"):
        CLIPModel.from_config(dataclasses.replace(preset("tiny_vit"), text=None))
    with pytest.raises(TypeError, match="ViTConfig"):
        build_tower(dataclasses.replace(ModifiedResNetConfig(), arch="vit"), 32)
    model = build_model("tiny_vit")
    with pytest.raises(ValueError, match="context_length=32"):
        model.encode_text(torch.zeros(1, 77, dtype=torch.long))
    with pytest.raises(ValueError, match="64x64"):
        model.encode_image(torch.zeros(1, 3, 32, 32))
