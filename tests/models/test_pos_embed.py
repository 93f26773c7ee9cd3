"""Positional-embedding resizing: parity with open_clip, the grid's geometry, and loading into a bigger model."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from clipl.models import build_model, preset
from clipl.models.pos_embed import adapt_pos_embed, grid_side, resize_pos_embed


def test_matches_open_clip_16_to_24():
    # ViT-L/14 at 224 px (16x16 patches + class token) -> 336 px (24x24), as for vit_l14_336.
    from open_clip.model import resize_pos_embed as open_clip_resize

    pos = torch.randn(16 * 16 + 1, 1024, generator=torch.Generator().manual_seed(0))
    sd = {"visual.positional_embedding": pos.clone()}
    open_clip_resize(sd, SimpleNamespace(visual=SimpleNamespace(grid_size=(24, 24))))
    ours = resize_pos_embed(pos, 24)
    assert ours.shape == (24 * 24 + 1, 1024)
    torch.testing.assert_close(ours, sd["visual.positional_embedding"], rtol=0, atol=1e-6)
    assert torch.equal(ours[0], pos[0])  # the class token is kept as it is


def _sampled(f, grid: int) -> torch.Tensor:
    # f at the centres of a grid x grid tiling of the unit square, row-major (row = y), plus a class row.
    c = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    y, x = torch.meshgrid(c, c, indexing="ij")
    cells = torch.stack([f(x, y), f(y, x)], dim=-1).reshape(grid * grid, 2)
    return torch.cat([torch.tensor([[7.0, -7.0]], dtype=torch.float64), cells]).float()


def test_resampling_follows_the_image_grid():
    # A smooth, x/y-asymmetric field sampled on 16x16 and resized to 24x24 must equal the same field
    # sampled on 24x24 (away from the clamped border): rows are y, columns x, nothing transposed.
    def f(x, y):
        return torch.sin(2.0 * x) + 0.5 * torch.cos(3.0 * y) + x * y

    got = resize_pos_embed(_sampled(f, 16), 24)[1:].reshape(24, 24, 2)
    want = _sampled(f, 24)[1:].reshape(24, 24, 2)
    inner = slice(3, -3)
    assert (got[inner, inner] - want[inner, inner]).abs().max() < 2e-3
    assert (got - want).abs().max() < 0.05  # the border too, within what clamping allows


def test_identity_at_the_same_size_and_constants_stay_constant():
    pos = torch.randn(65, 8)
    torch.testing.assert_close(resize_pos_embed(pos, 8), pos, rtol=0, atol=0)
    const = torch.cat([torch.zeros(1, 4), torch.full((64, 4), 0.3)])
    torch.testing.assert_close(resize_pos_embed(const, 12)[1:], torch.full((144, 4), 0.3), rtol=0, atol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="square grid"):
        resize_pos_embed(torch.zeros(51, 4), 8)  # 1 + 50: no square
    with pytest.raises(ValueError, match="square grid"):
        grid_side(1)


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_rn"])
def test_checkpoint_loads_into_a_higher_resolution_model(name):
    # 64 px -> 96 px: ViT grid 8 -> 12; ModifiedResNet attention-pool grid 2 -> 3.
    torch.manual_seed(0)
    small_cfg = preset(name)
    big_cfg = dataclasses.replace(small_cfg, image=dataclasses.replace(small_cfg.image, image_size=96))
    small, big = build_model(small_cfg), build_model(big_cfg)
    sd = {k: v.clone() for k, v in small.state_dict().items()}
    resized = adapt_pos_embed(sd, big)
    key = "visual.positional_embedding" if name == "tiny_vit" else "visual.attnpool.positional_embedding"
    assert resized == [key]
    big.load_state_dict(sd, strict=True)
    old, new = small.state_dict()[key], big.state_dict()[key]
    assert new.shape[0] == 1 + (math.isqrt(old.shape[0] - 1) * 3 // 2) ** 2
    torch.testing.assert_close(new, resize_pos_embed(old, math.isqrt(new.shape[0] - 1)), rtol=0, atol=0)
    for k, v in small.state_dict().items():  # everything else, the text positions included, unchanged
        if k != key:
            assert torch.equal(big.state_dict()[k], v), k
    big.eval()
    with torch.no_grad():
        out = big.encode_image(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, small_cfg.embed_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("recorded", [True, False])
def test_init_from_a_lower_resolution_checkpoint_resizes_the_grid(tmp_path, recorded):
    # model.init_from with a 64-px tiny_vit (8x8 grid) into the 96-px model (12x12), as vit_l14_336 does
    # with a 224-px ViT-L/14: strict, everything loaded as it is but the resized positions.
    from clipl.config.schema import RunConfig
    from clipl.models.weights import export_state_dict
    from clipl.module import CLIPModule

    torch.manual_seed(3)
    source = build_model("tiny_vit")
    path = export_state_dict(source if recorded else source.state_dict(), tmp_path / "w.safetensors")
    cfg = preset("tiny_vit")
    cfg = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, image_size=96), init_from=str(path))
    system = CLIPModule(RunConfig(model=cfg))
    system.configure_model()
    got, want = system.model.state_dict(), source.state_dict()
    key = "visual.positional_embedding"
    assert got[key].shape == (145, 128)
    torch.testing.assert_close(got[key], resize_pos_embed(want[key], 12), rtol=0, atol=0)
    assert all(torch.equal(got[k], v) for k, v in want.items() if k != key)
