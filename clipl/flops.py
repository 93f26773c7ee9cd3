"""Model FLOPs utilisation: FLOPs per training sample (counted once per model config) and device peaks.

MFU = achieved model FLOP/s per device / the device's peak dense FLOP/s at the run's compute precision.
"Model FLOPs" are what the model needs, not what the run executes: activation-checkpointing
recomputation is not counted (that would be hardware FLOPs utilisation), and a multiply-add counts as
two FLOPs (torch.utils.flop_counter's convention, the one open_clip's and PaLM's MFU figures use).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs per sample of one model config, counted with FlopCounterMode on the meta device."""

    image_forward: float
    """Image tower forward in training mode (patch dropout applied)."""
    text_forward: float
    """Text tower forward."""
    image_train: float
    """Image tower forward + backward as autograd runs it with the run's locks (1x forward when frozen)."""
    text_train: float
    """Text tower forward + backward, likewise."""
    embed_dim: int
    """Width of the shared embedding space (the objective's logits cost 2 x embed_dim per pair)."""

    @property
    def forward(self) -> float:
        """Both towers' forward FLOPs per sample."""
        return self.image_forward + self.text_forward

    def objective(self, contrastive_batch: int) -> float:
        """Forward FLOPs per sample of the image-text logits: one row of a B x B x D matmul."""
        return 2.0 * self.embed_dim * contrastive_batch

    def train(self, contrastive_batch: int) -> float:
        """Training FLOPs per sample: both towers' forward + backward, plus the logits (forward + backward)."""
        return self.image_train + self.text_train + 3.0 * self.objective(contrastive_batch)


def _count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _tower_flops(tower: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one sample ``x`` through ``tower`` (training mode)."""
    out: list[torch.Tensor] = []
    fwd = _count(lambda: out.append(tower(x)))
    y = out[0]
    bwd = _count(lambda: y.float().sum().backward()) if y.requires_grad else 0.0
    return fwd, fwd + bwd


def _config_key(model_cfg: Any, optim_cfg: Any) -> str:
    locks = None if optim_cfg is None else tuple(
        getattr(optim_cfg, f) for f in ("lock_image", "lock_image_unlocked_groups", "lock_text",
                                        "lock_text_unlocked_groups")
    )
    return repr((model_cfg, locks))


def model_flops(model_cfg: Any, optim_cfg: Any = None) -> ModelFlops:
    """FLOPs per sample of ``model_cfg`` (a ModelConfig), with ``optim_cfg``'s tower locks applied.

    The model is built on the meta device (no memory, no real arithmetic), so even the largest
    presets take well under a second; results are cached per config.
    """
    key = _config_key(model_cfg, optim_cfg)
    if key not in _CACHE:
        _CACHE[key] = _count_model(model_cfg, optim_cfg)
    return _CACHE[key]


_CACHE: dict[str, ModelFlops] = {}


def _count_model(model_cfg: Any, optim_cfg: Any) -> ModelFlops:
    from clipl.models.clip import CLIPModel
    from clipl.optim import apply_locks

    # Model FLOPs: no recomputation, whatever the run's activation checkpointing.
    model_cfg = dataclasses.replace(model_cfg, grad_checkpointing=False)
    with torch.device("meta"):
        model = CLIPModel.from_config(model_cfg)
    if optim_cfg is not None:
        apply_locks(model, optim_cfg)
    model.train()
    size = model.image_size
    images = torch.zeros(1, 3, size, size, device="meta")
    tokens = torch.zeros(1, model.context_length, dtype=torch.long, device="meta")
    image_fwd, image_train = _tower_flops(model.visual, images)
    text_fwd, text_train = _tower_flops(model.text_tower, tokens)
    return ModelFlops(image_fwd, text_fwd, image_train, text_train, model_cfg.embed_dim)


# Peak dense TFLOP/s per device and compute dtype (NVIDIA datasheets; the "with sparsity" figures
# halved). Lightning's table (lightning.fabric.utilities.throughput) covers more consumer chips, but
# lists sparse figures for the H200 and the H100 NVL and reads an L40S as an L4; this one comes first.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "a100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "h100 sxm": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "h100 pcie": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "h100 nvl": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "h200 sxm": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "h200 nvl": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "gh200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "l40s": {"fp32": 91.6, "tf32": 183.0, "bf16": 366.0, "fp16": 366.0},
    "l40": {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0, "fp16": 181.0},
    "l4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    "v100": {"fp32": 15.7, "fp16": 125.0},
}

# torch.cuda.get_device_name() substrings -> table key; first match wins, so longer names come first
# ("NVIDIA GH200 480GB" must not read as an H200, nor "NVIDIA L40S" as an L40 or L4).
_DEVICE_NAMES: tuple[tuple[str, str], ...] = (
    ("gh200", "gh200"), ("h200 nvl", "h200 nvl"), ("h200", "h200 sxm"), ("h100 nvl", "h100 nvl"),
    ("h100 pcie", "h100 pcie"), ("h100", "h100 sxm"), ("a100", "a100"), ("l40s", "l40s"), ("l40", "l40"),
    ("l4", "l4"), ("v100", "v100"),
)

_PRECISION_DTYPES = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "32-true": "fp32"}


def compute_dtype(precision: str, device: torch.device) -> str:
    """The matmul dtype a Lightning ``precision`` runs at: fp32 matmuls on CUDA use TF32 when allowed."""
    if precision not in _PRECISION_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {tuple(_PRECISION_DTYPES)}")
    dtype = _PRECISION_DTYPES[precision]
    if dtype == "fp32" and device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return dtype


def table_peak_tflops(device_name: str, dtype: str) -> Optional[float]:
    """Peak dense TFLOP/s of a CUDA device (as torch.cuda.get_device_name names it) at ``dtype``."""
    name = device_name.lower()
    for needle, key in _DEVICE_NAMES:
        if needle in name:
            return PEAK_TFLOPS[key].get(dtype)
    return None


def device_peak_flops(device: torch.device, precision: str, peak_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s of one device for MFU: ``peak_tflops`` when given (any device, CPU included), else
    clipl's table, else Lightning's; None when the device is unknown (MFU is then not logged)."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda" or precision not in _PRECISION_DTYPES:
        return None
    dtype = compute_dtype(precision, device)
    found = table_peak_tflops(torch.cuda.get_device_name(device), dtype)
    if found is not None:
        return found * 1e12
    from lightning.fabric.utilities.throughput import get_available_flops

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}
    flops = get_available_flops(device, torch_dtype[dtype])
    return None if flops is None else float(flops)
