"""Building blocks shared by the towers: fp32 LayerNorm, activations, attention, transformer stack.

Parameter names follow OpenAI's CLIP layout (``attn.in_proj_weight``, ``mlp.c_fc`` ...), so released
checkpoints load without renaming.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipl.registry import Registry


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input/parameter dtype, cast back to the input dtype.

    Half-precision LayerNorm loses the small variances of residual streams; the cost of the cast is
    negligible next to the matmuls.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# Activation registry: config strings map to module classes (no string sniffing downstream).
ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation", error=ValueError)
ACTIVATIONS.register("quick_gelu", QuickGELU)
ACTIVATIONS.register("gelu", nn.GELU)


def make_activation(name: str, field: str = "act") -> nn.Module:
    """Instantiate the activation registered as ``name``; ``field`` names the config field in errors."""
    return ACTIVATIONS.get(name, field)()


def resolve_heads(heads: int | None, default: int, width: int, field: str = "heads") -> int:
    """``heads`` (or ``default`` when None), checked to divide ``width``."""
    h = default if heads is None else heads
    if h <= 0 or width % h:
        raise ValueError(f"{field}={h} must be a positive divisor of the width {width}")
    return h


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, computed by SDPA.

    Batch-first: (B, L, D) -> (B, L, D). Initialised like nn.MultiheadAttention (xavier-uniform
    in_proj, zero biases), which is what OpenAI's vision transformer used.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by heads={heads}")
        self.width, self.heads = width, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with materialized(self):  # out_proj is a child: already partitioned under ZeRO-3
            nn.init.xavier_uniform_(self.in_proj_weight)
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # (B, L, 3D) -> 3 x (B, H, L, D/H)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act: str = "quick_gelu"):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, hidden)), ("gelu", make_activation(act)), ("c_proj", nn.Linear(hidden, width))]
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks with optional activation checkpointing per block."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, act: str = "quick_gelu"):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio, act) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = maybe_checkpoint(self.grad_checkpointing, block, x, causal)
        return x

    def init_openai_(self) -> None:
        """OpenAI's text-transformer initialisation (depth-scaled residual projections)."""
        attn_std = self.width**-0.5
        proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


@contextlib.contextmanager
def materialized(module: nn.Module) -> Iterator[None]:
    """Make ``module``'s parameters writable for initialisation, also under DeepSpeed ZeRO-3.

    Built under ``deepspeed.zero.Init`` (ZeRO-3's configure_model), every submodule's parameters are
    partitioned as soon as its own constructor returns, so a parent writing OpenAI's init into them
    afterwards would write into empty placeholders. Gathering them (rank 0 modifies, then the result
    is re-partitioned and broadcast) keeps the initialisation. Without ZeRO-3 this does nothing.
    """
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


def _batchnorms(modules: list[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for root in modules for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def _keep_bn_stats(bns: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Undo BatchNorm running-stat updates made inside the block (the recomputation pass).

    Without this, checkpointing a BatchNorm in training mode updates its running statistics twice
    per step (forward and recomputation), so checkpointed and plain training would diverge.
    """
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in bns
        if m.training and m.track_running_stats and m.running_mean is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def maybe_checkpoint(enabled: bool, fn: Callable, *args, scope: list[nn.Module] | None = None):
    """``fn(*args)``, recomputed in backward (non-reentrant checkpoint) when ``enabled``.

    ``scope`` lists the modules ``fn`` runs (default: ``fn`` itself when it is a module); their
    BatchNorm statistics are protected from the second update of the recomputation. Skipped when
    autograd is off (eval), where there is nothing to save.
    """
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    if scope is None:
        scope = [fn] if isinstance(fn, nn.Module) else []
    bns = _batchnorms(scope)
    if bns:
        ctx = lambda: (contextlib.nullcontext(), _keep_bn_stats(bns))  # noqa: E731
        return checkpoint(fn, *args, use_reentrant=False, context_fn=ctx)
    return checkpoint(fn, *args, use_reentrant=False)


def set_requires_grad(items, flag: bool) -> None:
    """Set requires_grad on every parameter of a list of modules/parameters."""
    for item in items:
        params = [item] if isinstance(item, nn.Parameter) else item.parameters()
        for p in params:
            p.requires_grad_(flag)


def lock_groups(tower: nn.Module, groups: list[list], unlocked_groups: int, field: str = "unlocked_groups") -> None:
    """Freeze every parameter of ``groups`` except those of the last ``unlocked_groups`` (LiT-style).

    ``groups`` must cover all of the tower's parameters, in input-to-output order.
    """
    if not 0 <= unlocked_groups <= len(groups):
        raise ValueError(f"{field}={unlocked_groups} must be in [0, {len(groups)}] for {type(tower).__name__}")
    for group in groups:
        set_requires_grad(group, False)
    for group in groups[len(groups) - unlocked_groups :]:
        set_requires_grad(group, True)
