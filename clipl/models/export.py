"""`clipl export SOURCE OUT --format openai|open_clip|hf` (command: clipl.cli.export): hand clipl weights to other tools.

SOURCE is anything clipl.models.weights.load_model reads (a clipl .ckpt, a DeepSpeed ZeRO checkpoint
folder, a weights file, an open_clip or Hugging Face folder). Formats:

- ``openai``: OUT is a .safetensors/.pt file in OpenAI's state-dict layout (what open_clip's
  ``pretrained=FILE`` and OpenAI's code load); the architecture is recorded in the safetensors
  header or in ``OUT.json``.
- ``open_clip``: OUT is a new folder with ``open_clip_config.json`` (model_cfg with quick_gelu,
  preprocess_cfg) and ``open_clip_model.safetensors``: ``open_clip.create_model_and_transforms(
  "local-dir:OUT")`` opens it, as does clip_benchmark (``--model local-dir:OUT``).
- ``hf``: OUT is a new folder that ``transformers.CLIPModel``, ``CLIPTokenizerFast`` and
  ``CLIPProcessor`` ``.from_pretrained(OUT)`` open (ViT image tower + clipl's text tower only).

``export_openai`` writes the OpenAI-layout weights of a clipl checkpoint file or dict directly (what
``clipl convert --openai`` does after consolidating a ZeRO folder).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Optional, Union

import torch

FORMATS = ("openai", "open_clip", "hf")
PathLike = Union[str, os.PathLike]


def _new_folder(out: Path, write) -> Path:
    """Run ``write(tmp_folder)`` beside ``out`` and rename: an interrupted export leaves no half folder."""
    if out.exists():
        raise FileExistsError(f"{out} exists; clipl export writes a new folder (choose another OUT or remove it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp / "out")
        os.replace(tmp / "out", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export(
    source: Union[str, Path],
    out: Union[str, Path],
    fmt: str,
    model: Optional[str] = None,
    half: bool = False,
    overwrite: bool = False,
    trust_torchscript: bool = False,
) -> Path:
    """Export the weights of ``source`` to ``out`` in format ``fmt`` (see the module docstring)."""
    from clipl.models.metadata import METADATA_KEY, config_to_json
    from clipl.models.weights import export_state_dict, load_checkpoint

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if fmt != "openai" and out.exists():
        raise FileExistsError(f"{out} exists; clipl export writes a new folder (choose another OUT or remove it)")
    if fmt == "openai" and out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    net, src = load_checkpoint(source, model=model, trust_torchscript=trust_torchscript)
    cfg = net.config
    sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}
    if half:
        sd = {k: v.half() if torch.is_floating_point(v) else v for k, v in sd.items()}
    if fmt == "openai":
        return export_state_dict(sd, out, overwrite=overwrite, config=cfg)
    if fmt == "open_clip":
        from clipl.models.open_clip_format import to_open_clip_cfg, write_open_clip_dir

        to_open_clip_cfg(cfg)  # refuse before anything is written
        meta = {"format": "pt", METADATA_KEY: config_to_json(cfg), "clipl_source": json.dumps(
            {"path": str(src.path), "kind": src.kind, "step": src.step})}
        return _new_folder(out, lambda tmp: write_open_clip_dir(tmp, cfg, sd, metadata=meta))
    from clipl.models.hf_format import to_hf_config, write_hf_dir

    try:
        to_hf_config(cfg)
    except ImportError as err:
        raise ImportError("--format hf needs transformers: pip install 'clipl[hf]'") from err
    return _new_folder(out, lambda tmp: write_hf_dir(tmp, cfg, sd))


def openai_state_dict(ckpt: Union[PathLike, Mapping], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The CLIPModel weights of a clipl/Lightning checkpoint (path or dict) with ``prefix`` stripped."""
    if not isinstance(ckpt, Mapping):
        ckpt = torch.load(Path(ckpt), map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if "logit_scale" not in out or not any(k.startswith("visual.") for k in out):
        raise KeyError(
            f"no CLIP model under prefix {prefix!r} (need 'visual.*' and 'logit_scale'); "
            f"first keys: {list(sd)[:5]}"
        )
    return out


def export_openai(
    ckpt: Union[PathLike, Mapping], path: PathLike, *, prefix: str = "model.", half: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the OpenAI-layout state dict (``visual.*``, ``transformer.*``, ``logit_scale`` ...) to ``path``.

    ``.safetensors`` paths are written as safetensors, anything else with torch.save; ``half`` stores
    floating tensors in fp16 as OpenAI released them.
    """
    if not isinstance(ckpt, Mapping):
        ckpt = torch.load(Path(ckpt), map_location="cpu", weights_only=True)
    sd = openai_state_dict(ckpt, prefix)
    if half:
        sd = {k: v.half() if torch.is_floating_point(v) else v for k, v in sd.items()}
    cfg = None
    if isinstance(ckpt.get("hyper_parameters"), Mapping) and "config" in ckpt["hyper_parameters"]:
        from clipl.models.sources import checkpoint_config

        cfg = checkpoint_config(ckpt["hyper_parameters"], str(path))
    # The architecture travels with the weights (clipl.models.metadata): header or <file>.json.
    from clipl.distributed.convert import save_new
    from clipl.models.metadata import METADATA_KEY, config_to_json, write_sidecar

    meta = {"format": "pt", METADATA_KEY: config_to_json(cfg)} if cfg is not None else None
    out = save_new(sd, Path(path), overwrite, metadata=meta)
    if cfg is not None and out.suffix != ".safetensors":
        write_sidecar(out, cfg)
    return out
