"""World size and batch arithmetic: devices x nodes, and the global batch split into micro-batches."""

from __future__ import annotations

import math
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


def resolve_batch(global_batch: int, per_device_max: int, world_size: int) -> tuple[int, int]:
    """(per_device, accumulate) with per_device x accumulate x world_size == global_batch.

    Uses the fewest accumulation steps whose per-device batch fits in ``per_device_max``.
    """
    if global_batch < 1 or per_device_max < 1 or world_size < 1:
        raise ValueError(
            f"global batch ({global_batch}), per-device max ({per_device_max}) and world size ({world_size}) "
            "must all be >= 1"
        )
    if global_batch % world_size:
        raise ValueError(
            f"trainer.global_batch_size={global_batch} is not divisible by the world size {world_size} "
            f"(devices x num_nodes); use a multiple of {world_size}, e.g. {_round_up(global_batch, world_size)}"
        )
    local = global_batch // world_size
    fits = lambda a: local % a == 0 and local // a <= per_device_max  # noqa: E731
    accumulate = next(a for a in range(math.ceil(local / per_device_max), local + 1) if fits(a))
    per_device = local // accumulate
    # A prime-ish local batch would "fit" only with tiny micro-batches and huge accumulation: refuse.
    if accumulate > 1 and per_device * 2 < per_device_max:
        step = world_size * per_device_max
        raise ValueError(
            f"trainer.global_batch_size={global_batch} over {world_size} rank(s) with a per-device maximum of "
            f"{per_device_max} only splits into micro-batches of {per_device} x {accumulate} accumulation steps; "
            f"use a multiple of {step} (e.g. {_round_up(global_batch, step)}) or change the per-device batch size"
        )
    return per_device, accumulate


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def accumulation_for(cfg: "TrainerConfig", micro_batch_size: int) -> int:
    """Gradient accumulation steps: derived from global_batch_size if set, else accumulate_grad_batches."""
    if cfg.global_batch_size is None:
        return cfg.accumulate_grad_batches
    ws = world_size(cfg)
    per_step = micro_batch_size * ws
    if cfg.global_batch_size % per_step:
        raise ValueError(
            f"trainer.global_batch_size={cfg.global_batch_size} is not a multiple of micro_batch_size "
            f"({micro_batch_size}) x world size ({ws}); derive the loader batch with clipl.trainer.resolve_batch"
        )
    return cfg.global_batch_size // per_step
