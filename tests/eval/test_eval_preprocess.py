"""Eval preprocessing (torchvision v2 Resize + CenterCrop on PIL) is bit-for-bit the hand-written
short-side bicubic resize and rounded centre crop clipl used before."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipl.eval.datasets import load_image


def _reference(img: Image.Image, size: int) -> torch.Tensor:
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("wh", [(97, 61), (61, 97), (64, 64), (33, 200), (301, 157)])
@pytest.mark.parametrize("size", [32, 47])
def test_load_image_equals_the_hand_written_resize_crop(wh, size):
    rng = np.random.default_rng(sum(wh) + size)
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    out = load_image(buf, size)
    assert out.dtype == torch.uint8 and out.shape == (3, size, size)
    assert torch.equal(out, _reference(img, size))
