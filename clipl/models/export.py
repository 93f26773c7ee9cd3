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
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

FORMATS = ("openai", "open_clip", "hf")


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
