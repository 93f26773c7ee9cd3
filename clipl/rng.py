"""Random-number-generator state for checkpoints: torch (CPU and CUDA), numpy and Python, per rank.

The data stream does not need this (its order and augmentations are a function of seed, epoch, rank
and worker); anything else random during a step does: dropout, drop-path, noise in a custom loss.
States are plain tensors, lists and ints, so checkpoints still load with weights_only=True.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist

from clipl.ranks import is_distributed, rank_and_world


def rng_state() -> dict:
    """This process's generator states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def gather_rng_states() -> list[dict]:
    """Every rank's states, in rank order (collective: call it on all ranks; rank 0 writes them)."""
    mine = rng_state()
    if not is_distributed():
        return [mine]
    states: list = [None] * rank_and_world()[1]
    dist.all_gather_object(states, mine)
    return states
