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
