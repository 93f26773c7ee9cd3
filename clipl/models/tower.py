"""The tower contract: what every registered image or text encoder provides, and the pieces they share.

A tower is any ``nn.Module`` a registered builder returns (``clipl.models.registry.register``). The
rest of clipl reaches towers only through this contract, never through their class: the optimizer
asks ``no_weight_decay``, the trainer ``set_grad_checkpointing``, LiT ``lock``, and evaluation's
linear probe ``forward(x, pre_projection=True)`` (timm's ``forward_head(pre_logits=True)`` idea).
The pre-projection switch is an argument of ``forward`` rather than a method of its own so the call
goes through ``nn.Module.__call__``: DeepSpeed ZeRO-3 gathers a module's own parameters in its
forward hooks, which a plain method call would skip.

``tests/models/test_tower_contract.py`` checks every registered architecture against it.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args, runtime_checkable

import torch
from torch import nn

Projection = Literal["linear", "mlp", "none"]
"""Projection heads of the adapter towers (timm, transformers): see :func:`projection_layers`."""
PROJECTIONS: tuple[str, ...] = get_args(Projection)


@runtime_checkable
class Tower(Protocol):
    """An encoder of images (B, 3, S, S) or token ids (B, L) into (B, output_dim) features."""

    output_dim: int
    """Width of the projected features (the model's embed_dim)."""

    def forward(self, x: torch.Tensor, pre_projection: bool = False) -> torch.Tensor:
        """(B, output_dim) projected features; with ``pre_projection`` the (B, width) pooled features
        the projection consumes (in eval mode: ``forward(x)`` is the projection of these)."""
        ...

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward; raises ValueError where the tower cannot."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Tower-relative names of parameters exempt from weight decay (embeddings, ...)."""
        ...

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze all but the last ``unlocked_groups`` layer groups (LiT); BatchNorm statistics too."""
        ...


def projection_layers(width: int, output_dim: int, kind: str, bias: bool, field: str) -> list[nn.Module]:
    """The layers projecting ``width`` pooled features to ``output_dim`` ("linear", "mlp" or "none").

    "mlp" is Linear-GELU-Linear with hidden width ``(width + output_dim) // 2``, halfway between the
    trunk and the embedding (the timm tower used ``2 * output_dim`` before the towers shared this
    head). ``field`` names the config field in errors ("image.proj", "text.proj").
    """
    if kind == "linear":
        return [nn.Linear(width, output_dim, bias=bias)]
    if kind == "mlp":
        hidden = (width + output_dim) // 2
        return [nn.Linear(width, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, output_dim, bias=bias)]
    if kind == "none":
        if width != output_dim:
            raise ValueError(f"{field}='none' needs the trunk's {width} features to equal embed_dim={output_dim}")
        return []
    raise ValueError(f"{field}={kind!r}: expected one of {', '.join(PROJECTIONS)}")


class FreezableBatchNorm:
    """Mixin for towers whose ``lock(freeze_bn_stats=True)`` keeps frozen BatchNorms' running statistics.

    A frozen BatchNorm (no trainable parameter) stays in eval mode now and after every ``.train()``,
    so the statistics of a locked tower do not drift with the new data.
    """

    _bn_frozen = False

    def freeze_bn_stats(self) -> None:
        """Keep every BatchNorm without trainable parameters in eval mode from now on."""
        self._bn_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self
