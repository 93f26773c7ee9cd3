"""Decode + crop transforms against torchvision's reference preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clipl.data.transforms import OPENAI_MEAN, OPENAI_STD, decode_image, normalize, random_crop_box


def smooth_jpeg(w, h, quality=95) -> bytes:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 29), 128 + 80 * np.sin((x + y) / 53)], -1)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_random_crop_box_follows_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        left, top, right, bottom = random_crop_box(300, 200, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 300 and 0 <= top and bottom <= 200
        assert 0.9 - 0.02 <= w * h / 60000 <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


@pytest.mark.parametrize("w,h", [(320, 256), (256, 400)])
def test_eval_transform_matches_torchvision(w, h):
    data = smooth_jpeg(w, h)
    ours = torch.from_numpy(decode_image(data, 224, train=False, draft=False)).float()
    ref = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.PILToTensor()])
    theirs = ref(Image.open(io.BytesIO(data)).convert("RGB")).float()
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().mean() < 2.0  # one resample instead of resize-then-crop: rounding only


def test_draft_decoding_of_big_jpegs_is_close_to_full_decoding():
    data = smooth_jpeg(1200, 900)
    fast = decode_image(data, 224, train=False, draft=True).astype(np.float32)
    full = decode_image(data, 224, train=False, draft=False).astype(np.float32)
    assert np.abs(fast - full).mean() < 3.0


def test_train_transform_is_seeded_and_uint8():
    data = smooth_jpeg(300, 240)
    a = decode_image(data, 64, True, np.random.default_rng(5))
    b = decode_image(data, 64, True, np.random.default_rng(5))
    c = decode_image(data, 64, True, np.random.default_rng(6))
    assert a.dtype == np.uint8 and a.shape == (3, 64, 64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_normalize_matches_torchvision():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = T.Normalize(OPENAI_MEAN, OPENAI_STD)(x.float() / 255)
    torch.testing.assert_close(normalize(x), ref)
