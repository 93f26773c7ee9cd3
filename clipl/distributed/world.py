"""World size: devices x nodes, as Lightning will resolve them (the batch plan divides the global batch by it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch

if TYPE_CHECKING:
    from clipl.trainer import TrainerConfig


def parse_devices(devices: Union[str, int, list]) -> Union[str, int, list[int]]:
    """'auto' -> 'auto'; '2' or 2 -> 2; '-1' -> -1 (all); '0,1' or [0, 1] -> [0, 1]."""
    if isinstance(devices, bool):
        raise ValueError(f"trainer.devices must be 'auto', a count or indices like '0,1', got {devices!r}")
    if isinstance(devices, int):
        value: Union[str, int, list[int]] = devices
    elif isinstance(devices, (list, tuple)):
        value = [int(d) for d in devices]
    else:
        text = str(devices).strip()
        try:
            if text == "auto":
                value = "auto"
            elif "," in text:
                value = [int(d) for d in text.split(",") if d.strip()]
            else:
                value = int(text)
        except ValueError:
            raise ValueError(
                f"trainer.devices must be 'auto', a count ('2', '-1' = all) or indices like '0,1', got {devices!r}"
            ) from None
    if isinstance(value, int) and (value == 0 or value < -1):
        raise ValueError(f"trainer.devices must be >= 1 or -1 (all), got {devices!r}")
    if isinstance(value, list) and (not value or min(value) < 0 or len(set(value)) != len(value)):
        raise ValueError(f"trainer.devices indices must be distinct and >= 0, got {devices!r}")
    return value


def uses_cuda(cfg: "TrainerConfig") -> bool:
    """Whether the run will use CUDA devices (explicitly, or "auto" with CUDA available)."""
    if cfg.accelerator == "cpu":
        return False
    return cfg.accelerator in ("gpu", "cuda") or torch.cuda.is_available()


def world_size(cfg: "TrainerConfig") -> int:
    """devices x num_nodes, with 'auto'/-1 resolved as Lightning does (all GPUs, or 1 CPU process)."""
    devices = parse_devices(cfg.devices)
    if isinstance(devices, list):
        per_node = len(devices)
    elif devices in ("auto", -1):
        per_node = max(torch.cuda.device_count(), 1) if uses_cuda(cfg) else 1
    else:
        per_node = devices
    return per_node * cfg.num_nodes
