"""FLIP patch dropout in the ViT tower: exact no-op at 0 and in eval, the right tokens kept, RNG replay."""

import copy

import pytest
import torch

from clipl.models.backbones.vit import VisionTransformer

IMAGE, PATCH = 64, 8  # an 8 x 8 grid: 64 patches


def tower(p: float, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(IMAGE, PATCH, width=64, layers=2, heads=2, output_dim=32, patch_dropout=p)


def plain_forward(v: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The ViT forward without the feature (every patch, no random draw)."""
    t = v.conv1(x).flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(t.shape[0], 1, -1)
    t = v.transformer(v.ln_pre(torch.cat([cls, t], dim=1) + v.positional_embedding))
    return v.ln_post(t[:, 0]) @ v.proj


def loss_and_grads(fn, v, x):
    v.zero_grad(set_to_none=True)
    loss = fn(x).square().sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in v.named_parameters()}


def test_zero_is_the_plain_model_bit_for_bit_and_draws_nothing():
    v, x = tower(0.0), torch.randn(4, 3, IMAGE, IMAGE)
    ref_loss, ref_grads = loss_and_grads(lambda x: plain_forward(v, x), v, x)
    state = torch.get_rng_state()
    loss, grads = loss_and_grads(v, v, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[n], ref_grads[n]) for n in ref_grads)


def test_eval_mode_is_unaffected():
    dropped, plain, x = tower(0.5), tower(0.0), torch.randn(4, 3, IMAGE, IMAGE)
    dropped.eval(), plain.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        assert torch.equal(dropped(x), plain(x))
    assert torch.equal(torch.get_rng_state(), state)
    dropped.train()
    with torch.no_grad():
        assert not torch.allclose(dropped(x), plain(x))


@pytest.mark.parametrize("p, kept", [(0.5, 32), (0.75, 16), (0.9, 6), (0.99, 1)])
def test_kept_tokens_are_the_class_token_and_distinct_own_patches(p, kept):
    v, x = tower(p), torch.randn(3, 3, IMAGE, IMAGE)
    assert v.kept_patches == kept
    seen = []
    v.ln_pre.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    v(x)
    tokens = seen[0]
    assert tokens.shape == (3, 1 + kept, 64)
    with torch.no_grad():
        patches = v.conv1(x).flatten(2).transpose(1, 2) + v.positional_embedding[1:]
        cls = v.class_embedding + v.positional_embedding[0]
    for i in range(3):
        assert torch.equal(tokens[i, 0], cls)
        # Each kept token is exactly one of this image's patch tokens, none twice.
        match = (tokens[i, 1:, None, :] == patches[i][None]).all(-1)
        assert (match.sum(1) == 1).all()
        assert match.any(0).sum() == kept
    # Different images keep different subsets (64 choose 32: equal by chance essentially never).
    if kept > 1:
        assert not torch.equal(tokens[0, 1:].sort(0).values, tokens[1, 1:].sort(0).values)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_restoring_the_rng_state_replays_the_subset(checkpointing):
    v, x = tower(0.5), torch.randn(4, 3, IMAGE, IMAGE)
    v.set_grad_checkpointing(checkpointing)
    state = torch.get_rng_state()
    loss1, grads1 = loss_and_grads(v, v, x)
    loss_other, _ = loss_and_grads(v, v, x)  # a fresh draw
    torch.set_rng_state(state)
    loss2, grads2 = loss_and_grads(v, v, x)
    assert torch.equal(loss1, loss2) and not torch.equal(loss1, loss_other)
    assert all(torch.equal(grads1[n], grads2[n]) for n in grads1)
    # Activation checkpointing recomputes the blocks from the kept tokens, not a new draw.
    plain = copy.deepcopy(v)
    plain.set_grad_checkpointing(not checkpointing)
    torch.set_rng_state(state)
    loss3, grads3 = loss_and_grads(plain, plain, x)
    assert torch.equal(loss3, loss1)
    assert all(torch.allclose(grads3[n], grads1[n], rtol=1e-5, atol=1e-7) for n in grads1)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_fraction_names_the_field(p):
    with pytest.raises(ValueError, match="image.patch_dropout"):
        tower(p)


def test_flip_recipe_halves_the_image_tower_flops():
    from clipl.flops import model_flops
    from clipl.models import preset
    from clipl.run import resolve

    _, cfg = resolve("vit_b16_flip", ["data=shapes"])
    assert cfg.model.image.patch_dropout == 0.5
    _, plain = resolve("vit_b16", ["data=shapes"])
    assert cfg.model.image == type(cfg.model.image)(**{**vars(plain.model.image), "patch_dropout": 0.5})
    ratio = model_flops(cfg.model).image_forward / model_flops(preset("vit_b16")).image_forward
    assert 0.45 < ratio < 0.52  # 98 of 196 patches + the class token (attention shrinks quadratically)
