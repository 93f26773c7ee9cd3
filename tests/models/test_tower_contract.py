"""Every registered tower architecture honours the Tower contract (clipl.models.tower), on tiny configs."""

from __future__ import annotations

import pytest
import torch

import clipl
from clipl.models import build_tower, list_archs, tower_config_class
from clipl.models.backbones.hf_text import HFTextConfig
from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.timm_image import TimmImageConfig
from clipl.models.backbones.vit import ViTConfig
from clipl.models.tower import Tower

EMBED = 16
TINY = {
    "vit": ViTConfig(image_size=32, patch_size=16, width=32, layers=2, heads=2),
    "modified_resnet": ModifiedResNetConfig(image_size=32, layers=[1, 1, 1, 1], width=8, heads=2),
    "text_transformer": TextTransformerConfig(context_length=16, width=32, heads=2, layers=2),
    "timm": TimmImageConfig(model_name="test_resnet", image_size=32),
    "hf_text": HFTextConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, context_length=16),
}
EXTRAS = {"timm": "timm", "hf_text": "transformers"}


def _ours(arch: str) -> bool:
    return tower_config_class(arch).__module__.startswith("clipl.")


def test_every_registered_architecture_has_a_tiny_config():
    assert sorted(a for a in list_archs() if _ours(a)) == sorted(TINY)


def _tower(arch: str) -> torch.nn.Module:
    if arch in EXTRAS:
        pytest.importorskip(EXTRAS[arch])
    torch.manual_seed(0)
    return build_tower(TINY[arch], EMBED)


def _inputs(cfg, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if hasattr(cfg, "context_length"):
        words = ["a", "red", "blue", "circle", "square", "photo", "of", "two", "small", "big"]
        texts = [" ".join(words[int(i)] for i in torch.randint(0, 10, (1 + k % 6,), generator=g)) for k in range(n)]
        return clipl.tokenize(texts, context_length=cfg.context_length)
    return torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=g)


@pytest.fixture(params=sorted(TINY))
def arch(request):
    return request.param


def test_forward_shape_and_protocol(arch):
    tower = _tower(arch)
    assert isinstance(tower, Tower) and tower.output_dim == EMBED
    out = tower(_inputs(TINY[arch], 3))
    assert out.shape == (3, EMBED) and torch.isfinite(out).all()


def test_pre_projection_features_feed_the_projection(arch):
    """forward(x) is an affine map of forward(x, pre_projection=True) (all tiny configs project linearly):
    fitted by least squares over more samples than features, the residual vanishes."""
    tower = _tower(arch).eval()
    with torch.no_grad():
        width = tower(_inputs(TINY[arch], 2), pre_projection=True).shape[1]
        x = _inputs(TINY[arch], width + 24)
        pre, out = tower(x, pre_projection=True).double(), tower(x).double()
    assert pre.shape == (x.shape[0], width)
    design = torch.cat([pre, torch.ones(len(pre), 1, dtype=pre.dtype)], dim=1)
    fit = design @ torch.linalg.lstsq(design, out).solution
    assert (fit - out).abs().max() < 1e-4 * out.abs().max()


def test_no_weight_decay_names_are_parameters(arch):
    tower = _tower(arch)
    names = tower.no_weight_decay()  # may be empty (a timm ResNet has no embeddings)
    assert isinstance(names, set) and names <= {n for n, _ in tower.named_parameters()}


def test_grad_checkpointing_same_output_and_grads(arch):
    tower = _tower(arch).train()
    for m in tower.modules():  # no randomness, so the two runs are comparable
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = _inputs(TINY[arch], 4)
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    ref = tower(x)
    ref.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in tower.named_parameters()}
    tower.zero_grad()
    tower.load_state_dict(state)  # BatchNorm running statistics as before the first pass
    tower.set_grad_checkpointing(True)
    out = tower(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for n, p in tower.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_lock_freezes_all_but_the_last_groups(arch):
    tower = _tower(arch)
    params = dict(tower.named_parameters())
    tower.lock(unlocked_groups=0)
    assert not any(p.requires_grad for p in params.values())
    tower.lock(unlocked_groups=1)
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and trainable != set(params)
    with pytest.raises(ValueError, match="unlocked_groups"):
        tower.lock(unlocked_groups=10_000)


def test_locked_batchnorm_keeps_its_statistics(arch):
    tower = _tower(arch)
    bns = [m for m in tower.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        pytest.skip(f"{arch} has no BatchNorm")
    tower.lock(unlocked_groups=0, freeze_bn_stats=True)
    tower.train()
    before = [m.running_mean.clone() for m in bns]
    tower(_inputs(TINY[arch], 4))
    assert all(not m.training for m in bns)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(bns, before))
