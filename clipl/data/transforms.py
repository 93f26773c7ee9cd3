"""Image transforms: CLIP's preprocessing constants and accelerator-side normalisation."""

from __future__ import annotations

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(images: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] (or float in [0, 1]) -> float32 normalised by mean/std.

    The loaders ship uint8 (4x less host->device traffic); this runs on the accelerator.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------- decoding + geometric transforms
import io  # noqa: E402
import math  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from clipl.data.skip import BadSample  # noqa: E402

TRAIN_SCALE = (0.9, 1.0)
"""open_clip's RandomResizedCrop area range for training."""
TRAIN_RATIO = (3 / 4, 4 / 3)
"""Aspect-ratio range of the random crop (torchvision's default)."""


def random_crop_box(width: int, height: int, rng: np.random.Generator, scale=TRAIN_SCALE, ratio=TRAIN_RATIO):
    """RandomResizedCrop's box (left, top, right, bottom): area in `scale`, log-uniform aspect in `ratio`.

    Same sampling rule as torchvision (10 tries, then a centred crop clamped to the ratio range).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int):
    """Box of the centred square of side min(width, height): resize-short-side + center-crop in one step."""
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    return left, top, left + side, top + side


def decode_image(
    data: bytes,
    size: int,
    train: bool,
    rng: np.random.Generator | None = None,
    max_pixels: int = 89_478_485,
    draft: bool = True,
) -> np.ndarray:
    """Image bytes -> uint8 (3, size, size) array: RandomResizedCrop (train) or resize + center crop (eval).

    Bicubic throughout. With `draft`, JPEGs at least twice the output size are decoded by libjpeg at a
    reduced scale (1/2, 1/4, 1/8) that still covers the output, which skips most of the decode and resize
    work. Raises BadSample for images that cannot be used.
    """
    if not data:
        raise BadSample("missing_image", "empty image member")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: we apply our own limit
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise BadSample("not_an_image", str(e)) from None
    except Exception as e:  # noqa: BLE001  (any parser failure is a bad sample, never fatal)
        raise BadSample("corrupt_image", repr(e)) from None
    width, height = im.size
    if width * height > max_pixels:
        raise BadSample("decompression_bomb", f"{width}x{height} > {max_pixels} pixels")
    try:
        if draft and im.format == "JPEG":
            # With a random crop of area >= scale[0], the crop's short side is >= sqrt(0.9)*short side,
            # so asking for `size / 0.9` keeps the crop at or above output resolution.
            need = size if not train else int(math.ceil(size / math.sqrt(TRAIN_SCALE[0])))
            short = min(width, height)
            if short >= 2 * need:
                scale = short / need
                im.draft("RGB", (int(math.ceil(width / scale)), int(math.ceil(height / scale))))
        im = im.convert("RGB")  # forces the decode: truncated data raises here
    except Exception as e:  # noqa: BLE001
        raise BadSample("corrupt_image", repr(e)) from None
    width, height = im.size
    if train:
        box = random_crop_box(width, height, rng if rng is not None else np.random.default_rng())
    else:
        box = center_crop_box(width, height)
    im = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(im).transpose(2, 0, 1).copy()
