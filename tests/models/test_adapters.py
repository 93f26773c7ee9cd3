"""timm image tower and Hugging Face text tower adapters, each paired with a clipl tower."""

from __future__ import annotations

import pytest
import torch

import clipl
from clipl.models import ModelConfig, build_model
from clipl.models.backbones.hf_text import HFTextConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.timm_image import TimmImageConfig
from clipl.models.backbones.vit import ViTConfig

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TINY_TEXT = TextTransformerConfig(context_length=16, width=64, heads=2, layers=1)
TINY_VIT = ViTConfig(image_size=32, patch_size=16, width=64, layers=1, heads=2)
TINY_BERT = HFTextConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, context_length=16)


def _train_step(model, image_size, context_length):
    torch.manual_seed(0)
    images = torch.randn(4, 3, image_size, image_size)
    tokens = clipl.tokenize(["a red circle", "two blue squares", "a photo", ""], context_length=context_length)
    out = model(images, tokens)
    logits = out.logit_scale.exp() * out.image_features @ out.text_features.T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    loss.backward()
    return out, loss


@pytest.mark.parametrize(
    "timm_cfg",
    [
        TimmImageConfig(model_name="vit_tiny_patch16_224", image_size=32, pool="token"),
        TimmImageConfig(model_name="resnet18", image_size=32, proj="mlp", proj_bias=True),
    ],
    ids=["vit_tiny", "resnet18"],
)
def test_timm_image_with_clipl_text(timm_cfg):
    model = build_model(ModelConfig(embed_dim=32, image=timm_cfg, text=TINY_TEXT))
    assert model.image_size == 32 and model.visual.output_dim == 32
    out, loss = _train_step(model, 32, 16)
    assert out.image_features.shape == (4, 32) and torch.isfinite(loss)
    # Every parameter (trunk, projection and text tower) gets a gradient.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert model.visual.head[-1].weight.grad.abs().sum() > 0


def test_timm_tower_contract_and_lock():
    tower = build_model(ModelConfig(embed_dim=32, image=TimmImageConfig(model_name="vit_tiny_patch16_224",
                                                                        image_size=32), text=TINY_TEXT)).visual
    assert {"trunk.pos_embed", "trunk.cls_token"} <= tower.no_weight_decay()
    x = torch.randn(2, 3, 32, 32)
    tower.eval()
    ref = tower(x)
    tower.set_grad_checkpointing(True)
    assert torch.allclose(tower(x), ref, atol=1e-6)
    tower.lock(unlocked_groups=1)  # only the projection stays trainable
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight"}
    tower.lock(unlocked_groups=2)  # plus timm's last coarse group (final norm)
    assert any(n.startswith("trunk.") for n, p in tower.named_parameters() if p.requires_grad)


def test_timm_resnet_lock_freezes_bn_stats():
    tower = build_model(ModelConfig(embed_dim=32, image=TimmImageConfig(model_name="resnet18", image_size=32),
                                    text=TINY_TEXT)).visual
    tower.lock(unlocked_groups=0)
    tower.train()
    assert not any(p.requires_grad for p in tower.parameters())
    bn = tower.trunk.bn1
    before = bn.running_mean.clone()
    tower(torch.randn(2, 3, 32, 32))
    assert not bn.training and torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("pooler", ["eot", "cls", "mean"])
def test_clipl_image_with_hf_text(pooler):
    cfg = ModelConfig(embed_dim=32, image=TINY_VIT, text=HFTextConfig(**{**TINY_BERT.__dict__, "pooler": pooler}))
    model = build_model(cfg)
    assert model.context_length == 16 and model.text.vocab_size == 49408
    out, loss = _train_step(model, 32, 16)
    assert out.text_features.shape == (4, 32) and torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]


def test_hf_padding_is_masked_and_pooling_exact():
    model = build_model(ModelConfig(embed_dim=32, image=TINY_VIT, text=TINY_BERT)).eval()
    tower = model.text
    tokens = clipl.tokenize(["a cat on a mat"], context_length=16)
    n = int(tokens.argmax()) + 1
    # Padding after <end_of_text> must not change the features: compare with the unpadded row.
    full = tower(tokens)
    short = tower(tokens[:, :n])
    assert torch.allclose(full, short, atol=1e-5)
    hidden = tower.transformer(input_ids=tokens[:, :n]).last_hidden_state
    assert torch.allclose(full, tower.proj(hidden[:, n - 1]), atol=1e-5)


def test_hf_contract_checkpointing_and_lock():
    tower = build_model(ModelConfig(embed_dim=32, image=TINY_VIT, text=TINY_BERT)).text
    names = dict(tower.named_parameters())
    assert tower.no_weight_decay() and tower.no_weight_decay() <= set(names)
    tokens = clipl.tokenize(["a cat", "a dog"], context_length=16)
    tower.train()  # transformers only checkpoints in train mode; no dropout, so runs are comparable
    for m in tower.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref = tower(tokens)
    ref.sum().backward()
    g_ref = {n: p.grad.clone() for n, p in tower.named_parameters()}
    tower.zero_grad()
    tower.set_grad_checkpointing(True)
    assert tower.grad_checkpointing
    out = tower(tokens)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert all(torch.allclose(p.grad, g_ref[n], atol=1e-5) for n, p in tower.named_parameters())
    tower.lock(unlocked_groups=1)
    assert {n for n, p in tower.named_parameters() if p.requires_grad} == {"proj.weight"}
    tower.lock(unlocked_groups=2)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert "proj.weight" in trainable and any(".layer.1." in n for n in trainable)
    assert not any(".layer.0." in n or "embeddings" in n for n in trainable)


def test_adapter_bad_input_is_named():
    with pytest.raises(ValueError, match="image.model_name"):
        build_model(ModelConfig(embed_dim=32, image=TimmImageConfig(model_name="not_a_model"), text=TINY_TEXT))
    with pytest.raises(ValueError, match="image.proj"):
        build_model(ModelConfig(embed_dim=32, image=TimmImageConfig(model_name="resnet18", proj="conv"),
                                text=TINY_TEXT))
    with pytest.raises(ValueError, match="text.pooler"):
        build_model(ModelConfig(embed_dim=32, image=TINY_VIT, text=HFTextConfig(pooler="max")))
    with pytest.raises(ValueError, match="text.model_type"):
        build_model(ModelConfig(embed_dim=32, image=TINY_VIT, text=HFTextConfig(model_type="no_such_model")))
