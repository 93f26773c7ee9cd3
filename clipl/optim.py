"""AdamW with CLIP's parameter groups, per-tower learning rates, warm-up + decay, tower locking.

The paper: AdamW with decoupled weight decay 0.2 on everything except gains, biases, embeddings and
the temperature; 2,000 warm-up iterations then cosine decay; betas (0.9, 0.98) and eps 1e-6 for
ViTs, (0.9, 0.999) and eps 1e-8 for ResNets.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from clipl.registry import Registry


@dataclass
class OptimConfig:
    """AdamW, its parameter groups and the learning-rate schedule."""

    lr: float = 5e-4
    """Peak learning rate (after warm-up); the paper's value for RN50, RN101, RN50x4, ViT-B."""
    weight_decay: float = 0.2
    """Decoupled weight decay on matrices; gains, biases, embeddings and logit_scale get none."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam (beta1, beta2): (0.9, 0.98) for ViTs, (0.9, 0.999) for ResNets (adam_defaults_for)."""
    eps: float = 1e-6
    """Adam epsilon: 1e-6 for ViTs, 1e-8 for ResNets."""
    warmup_steps: int = 2000
    """Optimizer steps of linear warm-up to the peak learning rate."""
    schedule: str = "cosine"
    """Decay after warm-up: "cosine", "linear" (both to min_lr_ratio * lr at the end) or "constant"."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of each group's peak learning rate."""
    image_lr: Optional[float] = None
    """Peak learning rate of the image tower (``model.visual``); None: ``lr``."""
    text_lr: Optional[float] = None
    """Peak learning rate of everything else (text tower, logit_scale/bias); None: ``lr``."""
    lock_image: bool = False
    """Freeze the image tower (LiT: locked-image tuning)."""
    lock_image_unlocked_groups: int = 0
    """With lock_image: leave the last N layer groups of the image tower trainable."""
    lock_text: bool = False
    """Freeze the text tower."""
    lock_text_unlocked_groups: int = 0
    """With lock_text: leave the last N layer groups of the text tower trainable."""
    fused: Optional[bool] = None
    """Fused AdamW kernel; None: fused when every parameter lives on a CUDA device or the CPU (torch has
    fused kernels for both; on CPU it steps 3-7x faster than the per-parameter loop)."""

    def __post_init__(self) -> None:
        # Every value checked when the config is made (a recipe or the command line), not when used.
        SCHEDULES.get(self.schedule)  # a registry: a recipe may register its own
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        for key in ("lr", "image_lr", "text_lr", "weight_decay", "warmup_steps"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"optim.{key} must be >= 0, got {value}")
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for tower in ("image", "text"):
            unlocked = getattr(self, f"lock_{tower}_unlocked_groups")
            if unlocked < 0:
                raise ValueError(f"optim.lock_{tower}_unlocked_groups must be >= 0, got {unlocked}")
            if unlocked and not getattr(self, f"lock_{tower}"):
                raise ValueError(f"optim.lock_{tower}_unlocked_groups={unlocked} has no effect without "
                                 f"optim.lock_{tower}=true")


# Adam settings from the CLIP paper, keyed by image tower arch; anything not listed is
# transformer-like and gets the ViT settings.
_ADAM_DEFAULTS: dict[str, tuple[list[float], float]] = {
    "modified_resnet": ([0.9, 0.999], 1e-8),
}
_VIT_ADAM = ([0.9, 0.98], 1e-6)


def adam_defaults_for(image_tower_cfg: Any) -> tuple[list[float], float]:
    """The paper's (betas, eps) for a model with this image tower config (keyed by its ``arch``)."""
    arch = getattr(image_tower_cfg, "arch", None)
    if not isinstance(arch, str):
        raise TypeError(f"expected an image tower config with an `arch` field, got {image_tower_cfg!r}")
    betas, eps = _ADAM_DEFAULTS.get(arch, _VIT_ADAM)
    return list(betas), eps


def _is_image_param(name: str) -> bool:
    return name.startswith("visual.")


def _ndim(param: nn.Parameter) -> int:
    # Under DeepSpeed ZeRO-3 a partitioned parameter's data is an empty 1-d placeholder; its real
    # shape is kept in `ds_shape`, and the decay rule must look at that one.
    shape = getattr(param, "ds_shape", None)
    return len(shape) if shape is not None else param.ndim


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: {image, rest} x {decay, no decay}; frozen parameters left out.

    No decay on parameters with ndim < 2 (gains, biases, logit_scale/bias) and on the names in
    ``model.no_weight_decay()`` (embeddings). The image tower is ``model.visual.*``; every other
    parameter, logit_scale included, follows ``text_lr``. Each group has a ``name`` key.
    """
    # torch.compile(model) wraps it and prefixes parameter names with `_orig_mod.`; group the
    # original module so names match its no_weight_decay() and the `visual.` prefix.
    model = getattr(model, "_orig_mod", model)
    no_decay_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    # Tied parameters appear once in named_parameters(); any alias listed exempts the tensor.
    aliases = list(model.named_parameters(remove_duplicate=False))
    unknown = sorted(no_decay_names - {n for n, _ in aliases})
    if unknown:
        raise ValueError(f"{type(model).__name__}.no_weight_decay() names unknown parameters: {unknown}")
    exempt = {id(p) for n, p in aliases if n in no_decay_names}
    tower_lr = {
        "image": cfg.lr if cfg.image_lr is None else cfg.image_lr,
        "text": cfg.lr if cfg.text_lr is None else cfg.text_lr,
    }
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tower = "image" if _is_image_param(name) else "text"
        decay = _ndim(param) >= 2 and id(param) not in exempt
        groups.setdefault((tower, decay), []).append(param)
    out = []
    for tower in ("image", "text"):
        for decay in (True, False):
            params = groups.get((tower, decay))
            if params:
                out.append(
                    {
                        "name": f"{tower}/{'decay' if decay else 'no_decay'}",
                        "params": params,
                        "lr": tower_lr[tower],
                        "weight_decay": cfg.weight_decay if decay else 0.0,
                    }
                )
    if not out:
        raise ValueError("no trainable parameters: every parameter is frozen (check lock_image/lock_text)")
    return out


_FUSED_DEVICES = ("cuda", "cpu")
"""Device types with a fused AdamW kernel in every torch this package supports (>= 2.4)."""


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (fused on CUDA and CPU unless ``cfg.fused`` says otherwise).

    ``optimizer_class`` is another AdamW implementation taking the same groups and hyperparameters
    (DeepSpeedCPUAdam when DeepSpeed offloads the optimizer state; it has no ``fused`` switch).
    """
    groups = param_groups(model, cfg)
    if optimizer_class is not torch.optim.AdamW:
        return optimizer_class(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    fused = cfg.fused
    if fused is None:
        fused = all(p.device.type in _FUSED_DEVICES for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused
    )


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float, min_ratio: float) -> float:
    return 1.0 - (1.0 - min_ratio) * progress


def _constant(progress: float, min_ratio: float) -> float:
    return 1.0


# Decay shapes after warm-up: progress in [0, 1] -> multiplier of the peak learning rate.
SCHEDULES: Registry[Callable[[float, float], float]] = Registry("optim.schedule", error=ValueError)
SCHEDULES.register("cosine", _cosine)
SCHEDULES.register("linear", _linear)
SCHEDULES.register("constant", _constant)


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of each group's peak lr at optimizer step ``step`` (0-based).

    Warm-up is linear, (step + 1) / warmup_steps, as in open_clip, so the first step already
    moves the weights and the peak is reached on step warmup_steps - 1. Afterwards the decay runs
    from 1 at step warmup_steps to min_lr_ratio at step total_steps (and stays there).
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = total_steps - cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return SCHEDULES.get(cfg.schedule)(progress, cfg.min_lr_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """Per-step LambdaLR: warm-up then ``cfg.schedule``; one multiplier, so tower lr ratios hold."""
    if total_steps <= cfg.warmup_steps and cfg.schedule != "constant":
        # Smoke runs of paper recipes (trainer.max_steps=2 with 2,000 warm-up steps) are legitimate:
        # the whole run is warm-up and the decay never starts. Say so rather than refuse.
        warnings.warn(
            f"the run ({total_steps} steps) is not longer than optim.warmup_steps ({cfg.warmup_steps}): "
            f"the learning rate only warms up and never reaches its peak or the {cfg.schedule} decay"
        )
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg, total_steps))


def apply_locks(model: nn.Module, cfg: OptimConfig) -> None:
    """Freeze towers as ``cfg`` asks (LiT), via ``model.lock_image_tower`` / ``lock_text_tower``."""
    for tower, locked, unlocked in (
        ("image", cfg.lock_image, cfg.lock_image_unlocked_groups),
        ("text", cfg.lock_text, cfg.lock_text_unlocked_groups),
    ):
        if not locked:  # the values were checked by OptimConfig.__post_init__
            continue
        lock = getattr(model, f"lock_{tower}_tower", None)
        if lock is None:
            raise TypeError(f"{type(model).__name__} has no lock_{tower}_tower(); cannot lock the {tower} tower")
        lock(unlocked)
