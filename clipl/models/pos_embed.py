"""Resizing learned positional embeddings to another patch grid, to train or evaluate at a new resolution.

A ViT at 224 px with 14-px patches has a 16x16 grid of positions plus the class token; at 336 px the
grid is 24x24. The grid rows are resampled as an image (bicubic, align_corners=False, with PIL-style
antialiasing as open_clip and timm do, so a checkpoint resized here equals one resized there); the class
token row is kept as it is. The same holds for a ModifiedResNet's attention pool (its extra row is the
mean token).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

POSITIONAL_KEYS = ("visual.positional_embedding", "visual.attnpool.positional_embedding")
"""Image-tower positional embeddings that sit on a square patch grid after one extra token."""


def grid_side(rows: int, prefix_tokens: int = 1, name: str = "positional embedding") -> int:
    """The side of the square grid of a positional embedding with ``rows`` rows."""
    side = math.isqrt(rows - prefix_tokens)
    if rows <= prefix_tokens or side * side != rows - prefix_tokens:
        raise ValueError(f"{name}: {rows} rows are not {prefix_tokens} extra token(s) plus a square grid")
    return side


def resize_pos_embed(pos: torch.Tensor, grid: int, prefix_tokens: int = 1) -> torch.Tensor:
    """``(prefix + g*g, C)`` -> ``(prefix + grid*grid, C)``: the grid resampled bicubically, prefix rows kept.

    Computed in fp32 and returned in ``pos``'s dtype; the same grid returns an unchanged copy.
    """
    if pos.dim() != 2:
        raise ValueError(f"expected a (tokens, width) positional embedding, got shape {tuple(pos.shape)}")
    old = grid_side(pos.shape[0], prefix_tokens)
    if old == grid:
        return pos.clone()
    prefix, cells = pos[:prefix_tokens], pos[prefix_tokens:]
    image = cells.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, C, g, g): rows are y, cols x
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    cells = image.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)
    return torch.cat([prefix, cells], dim=0)


def adapt_pos_embed(state_dict: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Resize, in place, the image-tower positional embeddings of ``state_dict`` to ``model``'s grid.

    Only keys in :data:`POSITIONAL_KEYS` (OpenAI/clipl layout) whose grid differs from the model's are
    touched; everything else is left for the caller's strict load to check. Returns the resized keys.
    """
    target: Mapping[str, torch.Tensor] = model.state_dict()
    resized = []
    for key in POSITIONAL_KEYS:
        if key not in state_dict or key not in target or state_dict[key].shape == target[key].shape:
            continue
        old, new = state_dict[key], target[key]
        if old.shape[1:] != new.shape[1:]:
            raise ValueError(f"{key}: width {old.shape[1]} in the checkpoint, {new.shape[1]} in the model; "
                             "only the grid can be resized")
        state_dict[key] = resize_pos_embed(old, grid_side(new.shape[0], name=key))
        resized.append(key)
    return resized
