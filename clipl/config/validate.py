"""Fail fast: one pass over a resolved RunConfig that checks what the run will touch, before it is built.

Parsing (clipl.config.parse) already refuses unknown keys, wrong types and unknown names. This pass
checks the world outside the config: data paths and shard patterns, evaluation sets, the accelerator
and device count that this machine really has, precision against that device, checkpoints to start
from, and whether ``out_dir`` can be written. Every problem becomes one line naming its field, and all
of them are reported together (a newcomer fixes five typos in one round, not five). It imports neither
Lightning nor the model code and reads no data beyond directory listings, so it takes well under a
second. Remote sources (fsspec URLs, ``pipe:`` commands) are left to the loader: checking them would
mean reaching the network here.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

from clipl.config.parse import ConfigProblems
from clipl.registry import close_matches

Problem = str  # "field: what is wrong and what to do", one line


def _is_remote(path: str) -> bool:
    return path.startswith("pipe:") or ("://" in path and not path.startswith("file://"))


def _local_matches(pattern: str, shards_only: bool = True) -> tuple[list[str], list[str]]:
    """(existing, missing) local files of a brace/glob pattern; a folder stands for its .tar files."""
    from braceexpand import braceexpand

    found, missing = [], []
    for item in braceexpand(pattern.strip()):
        item = os.path.expanduser(item.removeprefix("file://"))
        if any(c in item for c in "*?["):
            found += glob.glob(item)
        elif os.path.isdir(item):  # a folder of shards (data sources), or a folder checked by the caller
            found += glob.glob(os.path.join(item, "*.tar")) or ([item] if not shards_only else [])
        elif os.path.exists(item):
            found.append(item)
        else:
            missing.append(item)
    return found, missing


def check_data_source(spec: Optional[str], field: str) -> list[Problem]:
    """A ``data.train``/``data.val`` string: "shapes", tables and shard patterns joined by "::"."""
    from clipl.data.sources import SHAPES
    from clipl.data.table import is_table

    if spec is None:
        return []
    if not spec.strip():
        return [f"{field}: empty; give shard pattern(s), a .csv/.tsv/.parquet table, or 'shapes'"]
    problems = []
    for part in (p.strip() for p in spec.split("::")):
        if part == SHAPES or _is_remote(part):
            continue  # generated on first use / read by the loader (fsspec, pipe:)
        if is_table(part):
            if not Path(part).expanduser().is_file():
                problems.append(f"{field}: table {part!r} does not exist")
            continue
        found, missing = _local_matches(part)
        if not found:
            first = f" (first: {missing[0]})" if missing else ""
            problems.append(f"{field}: shard pattern {part!r} matches no existing file{first}; "
                            "check the path and the {a..b} range")
    return problems


def check_eval_spec(spec: str, field: str) -> list[Problem]:
    """An evaluation set: "shapes[:split]", an ImageFolder directory, or WebDataset eval shards."""
    from clipl.eval.specs import _split_name

    _, body = _split_name(spec)
    scheme, _, split = body.partition(":")
    if scheme == "shapes":
        splits = ("", "train", "val", "shape", "colour")
        return [] if split in splits else [f"{field}: unknown shapes split {split!r}; splits: train, val, shape, colour"]
    root, _, split = body.rpartition(":")
    if root and "/" not in split and Path(root).expanduser().is_dir():  # "DIR:train": a clip_benchmark split
        body = root
    p = Path(body).expanduser()
    if p.is_dir():
        if any(p.glob("*.tar")) or any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir()):
            return []
        return [f"{field}: {body!r} has neither class sub-folders (ImageFolder: {body}/<class>/<image>) "
                "nor .tar shards"]
    found, missing = _local_matches(body)
    if not found:
        return [f"{field}: {body!r} does not exist (give an ImageFolder directory, eval shards, or 'shapes')"]
    if missing:
        return [f"{field}: {len(missing)} eval shard(s) of {body!r} are missing (first: {missing[0]})"]
    return []


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def bf16_supported(device: str) -> bool:
    """Whether ``device`` ('cpu' or 'cuda') runs bfloat16 kernels natively (not emulated)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # oneDNN's bf16 path: AVX512-BW/VL/DQ or AMX/AVX512-BF16 CPUs
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_hardware(trainer: Any) -> list[Problem]:
    """Accelerator, device count and precision against what this machine has."""
    from clipl.training.config import parse_devices

    problems = []
    gpus = cuda_device_count()
    wants_gpu = trainer.accelerator in ("gpu", "cuda")
    if wants_gpu and gpus == 0:
        problems.append(f"trainer.accelerator={trainer.accelerator}: no CUDA GPU is visible on this machine "
                        "(torch.cuda.is_available() is False); use --accelerator cpu, or run where a GPU is")
    on_gpu = gpus > 0 and trainer.accelerator != "cpu"
    try:
        devices = parse_devices(trainer.devices)
    except ValueError:
        devices = "auto"  # already reported by the trainer config's own validation
    if on_gpu:
        if isinstance(devices, int) and devices > gpus:
            problems.append(f"trainer.devices={devices}: this machine has {gpus} CUDA GPU(s); "
                            f"use --devices {gpus} (or fewer)")
        if isinstance(devices, list) and any(d >= gpus or d < 0 for d in devices):
            problems.append(f"trainer.devices={trainer.devices}: GPU indices must be in 0..{gpus - 1}")
    elif isinstance(devices, list) and not wants_gpu:
        problems.append(f"trainer.devices={trainer.devices}: device indices select GPUs and this run uses the "
                        "CPU; give a process count instead (e.g. --devices 2)")
    device = "cuda" if on_gpu else "cpu"
    if not (wants_gpu and gpus == 0) and trainer.precision.startswith("bf16") and not bf16_supported(device):
        what = "this GPU (bf16 needs compute capability 8.0+)" if device == "cuda" else \
            "this CPU (no AVX512-BF16/AMX or AVX512 bf16 kernels)"
        problems.append(f"trainer.precision={trainer.precision}: {what} has no native bfloat16 support; "
                        "use 32-true" + (" or 16-mixed" if device == "cuda" else ""))
    return problems


def check_checkpoint(path: Optional[str], field: str) -> list[Problem]:
    if path is None or (field == "checkpoint.resume" and path in ("auto", "never")):
        return []
    if _is_remote(path):
        return []
    if field == "model.init_from":  # open_clip's folder syntax, accepted by clipl.models.sources
        path = path.removeprefix("local-dir:")
    if not Path(path).expanduser().exists():
        close = close_matches(path, ("auto", "never"), n=1, cutoff=0.6) if field == "checkpoint.resume" else []
        return [f"{field}={path}: no such file or folder" + (f" (or did you mean {close[0]!r}?)" if close else "")]
    return []


def check_out_dir(out_dir: str) -> list[Problem]:
    """``out_dir`` is, or can be created as, a writable directory."""
    p = Path(out_dir).expanduser().absolute()
    if p.exists() and not p.is_dir():
        return [f"out_dir={out_dir}: exists and is not a directory"]
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return [f"out_dir={out_dir}: {probe} is a file, so the run directory cannot be created"]
    try:  # a real write: os.access says yes to root even where the filesystem refuses (read-only mounts)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return [f"out_dir={out_dir}: cannot write in {probe} ({e.strerror}); choose another out_dir"]
    return []


def config_problems(cfg: Any, own_data: bool = False) -> list[Problem]:
    """Every problem of ``cfg`` that can be seen before anything is built. ``own_data``: the recipe
    brings its own datamodule, so the ``data.train``/``data.val`` sources are not clipl's to check."""
    problems: list[Problem] = []
    if not own_data:
        problems += check_data_source(cfg.data.train, "data.train")
        problems += check_data_source(cfg.data.val, "data.val")
    for task in ("zeroshot", "retrieval", "linear_probe"):
        for i, spec in enumerate(getattr(cfg.eval, task)):
            problems += check_eval_spec(spec, f"eval.{task}[{i}]")
    problems += check_hardware(cfg.trainer)
    problems += check_checkpoint(cfg.checkpoint.resume, "checkpoint.resume")
    problems += check_checkpoint(cfg.model.init_from, "model.init_from")
    problems += check_out_dir(cfg.out_dir)
    return problems


def validate(cfg: Any, own_data: bool = False) -> None:
    """Raise ConfigProblems listing every problem of ``cfg`` (see :func:`config_problems`)."""
    problems = config_problems(cfg, own_data)
    if problems:
        raise ConfigProblems(problems)


def eval_command_problems(checkpoint: str, sets: dict[str, list[str]], out: Optional[str], device: str) -> list[Problem]:
    """`clipl eval`'s arguments: the checkpoint, every set (``{"zeroshot": [...], ...}``), --out, --device."""
    problems = []
    if not re.match(r"^[a-z][a-z0-9+-]*:(?!//)", checkpoint) or checkpoint.startswith("local-dir:"):
        problems += check_checkpoint(checkpoint.removeprefix("local-dir:"), "checkpoint")  # hub names: the loader's
    for task, specs in sets.items():
        for spec in specs or []:
            problems += [p.replace(f"--{task}[0]", f"--{task.replace('_', '-')}", 1)
                         for p in check_eval_spec(spec, f"--{task}[0]")]
    if out:
        problems += check_out_dir(out)
    if device.startswith("cuda") and cuda_device_count() == 0:
        problems.append(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
    return [p.replace("out_dir=", "--out ", 1).replace("another out_dir", "another --out") for p in problems]
