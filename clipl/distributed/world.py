"""World size: devices x nodes, as Lightning will resolve them (the batch plan divides the global batch by it)."""

from __future__ import annotations

import torch

from clipl.training.config import TrainerConfig, parse_devices


def uses_cuda(cfg: TrainerConfig) -> bool:
    """Whether the run will use CUDA devices (explicitly, or "auto" with CUDA available)."""
    if cfg.accelerator == "cpu":
        return False
    return cfg.accelerator in ("gpu", "cuda") or torch.cuda.is_available()


def world_size(cfg: TrainerConfig) -> int:
    """devices x num_nodes, with 'auto'/-1 resolved as Lightning does (all GPUs, or 1 CPU process)."""
    devices = parse_devices(cfg.devices)
    if isinstance(devices, list):
        per_node = len(devices)
    elif devices in ("auto", -1):
        per_node = max(torch.cuda.device_count(), 1) if uses_cuda(cfg) else 1
    else:
        per_node = devices
    return per_node * cfg.num_nodes
