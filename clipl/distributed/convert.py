"""ZeRO checkpoint directory -> one fp32 clipl checkpoint, and clipl checkpoint -> OpenAI-layout weights.

Lightning's DeepSpeedStrategy saves a *directory* (``epoch=0-step=100.ckpt/``) holding ``latest`` and a
tag folder (``checkpoint/``) with per-rank ``*_model_states.pt`` and ``*_optim_states.pt``. The fp32
master weights live, partitioned, in the optimizer states; DeepSpeed's public
``get_fp32_state_dict_from_zero_checkpoint`` reassembles them without a GPU or a process group.

    clipl convert ZERO_DIR OUT.ckpt [--openai OUT.pt] [--tag TAG] [--overwrite]   (clipl.cli.convert)

To hand weights to other tools (open_clip folders, Hugging Face, OpenAI layout) from any source,
ZeRO folders included, use ``clipl export`` (clipl.models.export, which also holds ``export_openai``:
a clipl checkpoint -> OpenAI-layout weights). This module knows nothing of the model: clipl.models
reads ZeRO folders through it, never the other way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch

# Lightning checkpoint entries worth keeping in a weights-only checkpoint; optimizer, loop and
# callback states are tied to the sharded run and are dropped (resume from the ZeRO directory instead).
# "clipl" holds CLIPModule's counters (samples seen, skipped steps), plain ints by construction.
_KEEP = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams_name",
         "datamodule_hyper_parameters", "datamodule_hparams_name", "clipl")
# Old Lightning (< 2.1) saved the LightningModule under this wrapper attribute.
_WRAPPER_PREFIX = "_forward_module."

PathLike = Union[str, os.PathLike]


def _tag_dir(ckpt_dir: Path, tag: Optional[str]) -> tuple[str, Path]:
    if not ckpt_dir.is_dir():
        hint = (" (a regular .ckpt file needs no conversion; to hand weights to open_clip, transformers or "
                "OpenAI's layout use `clipl export SOURCE OUT --format openai|open_clip|hf`)") if ckpt_dir.is_file() else ""
        raise FileNotFoundError(f"ZeRO checkpoint directory {str(ckpt_dir)!r} does not exist or is not a directory{hint}")
    if tag is None:
        latest = ckpt_dir / "latest"
        if not latest.is_file():
            raise FileNotFoundError(
                f"{str(latest)!r} not found: not a DeepSpeed checkpoint directory, or pass --tag "
                f"(subfolders: {sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir())})"
            )
        tag = latest.read_text().strip()
    folder = ckpt_dir / tag
    if not folder.is_dir() or not any(folder.glob("*_model_states.pt")):
        raise FileNotFoundError(f"{str(folder)!r} has no *_model_states.pt files: checkpoint tag {tag!r} is incomplete")
    if not any(folder.glob("*_optim_states.pt")):
        raise FileNotFoundError(
            f"{str(folder)!r} has no *_optim_states.pt files: the fp32 master weights live there; "
            "was the checkpoint saved with save_weights_only?"
        )
    return tag, folder


def _rank0_model_states(folder: Path) -> Path:
    # ZeRO-1/2 write one mp_rank_00 file; ZeRO-3 writes one per data-parallel rank.
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no rank-0 model states file in {str(folder)!r}")


def _plain(value: Any) -> Any:
    """Dict subclasses (Lightning's AttributeDict) -> dict, so the result loads with weights_only=True."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def save_new(obj: Any, out: Path, overwrite: bool, metadata: Optional[dict] = None) -> Path:
    """torch.save ``obj`` (safetensors for a ``.safetensors`` path, with ``metadata``) to ``out`` atomically;
    an existing ``out`` is kept unless ``overwrite``."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists; pass --overwrite (overwrite=True) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename: an interrupted conversion never leaves a truncated file.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in obj.items()}, tmp, metadata=metadata)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def convert_zero_checkpoint(
    ckpt_dir: PathLike, out_path: PathLike, *, tag: Optional[str] = None, overwrite: bool = False
) -> Path:
    """Consolidate a ZeRO-1/2/3 checkpoint directory into one fp32 Lightning-style ``.ckpt`` file.

    The file holds ``state_dict`` (fp32, keys as in the LightningModule) and, when the run saved them,
    ``hyper_parameters``, ``epoch`` and ``global_step``; it loads with ``torch.load(weights_only=True)``
    and ``CLIPModule.load_from_checkpoint``.
    """
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError("converting ZeRO checkpoints needs DeepSpeed: pip install 'clipl[deepspeed]'") from e

    ckpt_dir, out = Path(ckpt_dir), Path(out_path)
    if out.exists() and not overwrite:  # fail before the (possibly long) consolidation
        raise FileExistsError(f"{str(out)!r} exists; pass --overwrite (overwrite=True) to replace it")
    tag, folder = _tag_dir(ckpt_dir, tag)
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    state_dict = {}
    for key, value in state.items():
        key = key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX) else key
        # Buffers come from the (bf16/fp16) module states: promote them too, the file is fp32 throughout.
        if torch.is_floating_point(value):
            value = value.float()
        state_dict[key] = value.detach().clone().contiguous()

    # DeepSpeed pickles its own objects into the model states; this is the user's own checkpoint.
    client = torch.load(_rank0_model_states(folder), map_location="cpu", weights_only=False)
    # ZeRO-1 records no frozen parameters for zero_to_fp32 (only stages >= 2 save their fragments), but
    # its full module copy has them: frozen weights never change, so that copy is exact (training dtype).
    filled = []
    for key, value in (client.get("module") or {}).items():
        key = key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX) else key
        if key not in state_dict and torch.is_tensor(value) and value.numel() > 0:
            state_dict[key] = (value.float() if torch.is_floating_point(value) else value).clone().contiguous()
            filled.append(key)
    checkpoint: dict[str, Any] = {k: _plain(client[k]) for k in _KEEP if k in client}
    if "pytorch-lightning_version" not in checkpoint:
        import lightning

        # Lightning's loader migrates checkpoints by this version; a bare deepspeed engine has none.
        checkpoint["pytorch-lightning_version"] = lightning.__version__
    checkpoint["state_dict"] = state_dict
    ds_config = client.get("ds_config") or {}
    checkpoint["clipl_conversion"] = {
        "source": str(ckpt_dir.resolve()),
        "tag": tag,
        "zero_stage": int((ds_config.get("zero_optimization") or {}).get("stage", 0)),
        "dp_world_size": int(client.get("dp_world_size", 1)),
        "deepspeed_version": str(client.get("ds_version", "")),
        "from_module_copy": filled,
    }
    return save_new(checkpoint, out, overwrite)
