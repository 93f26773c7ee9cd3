"""ZeRO checkpoint directory -> one fp32 clipl checkpoint, and clipl checkpoint -> OpenAI-layout weights.

    clipl convert ZERO_DIR OUT.ckpt [--openai OUT.pt] [--tag TAG] [--overwrite] [--half]

The work is clipl.distributed.convert's (and clipl.models.export's); this module only reads the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from clipl.distributed.convert import convert_zero_checkpoint
from clipl.models.export import export_openai


def main(argv: Optional[list[str]] = None) -> int:
    """``clipl convert ZERO_DIR OUT [--openai OUT2] [--tag TAG] [--overwrite] [--half]``."""
    parser = argparse.ArgumentParser(prog="clipl convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("zero_dir", help="DeepSpeed checkpoint directory (contains `latest`)")
    parser.add_argument("out", help="output fp32 checkpoint (.ckpt)")
    parser.add_argument("--openai", metavar="OUT2", help="also write an OpenAI-layout state dict (.pt/.safetensors)")
    parser.add_argument("--tag", help="checkpoint tag (default: the one named in `latest`)")
    parser.add_argument("--prefix", default="model.", help="LightningModule attribute holding the CLIPModel")
    parser.add_argument("--half", action="store_true", help="store the OpenAI export in fp16")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    if args.openai and Path(args.openai).exists() and not args.overwrite:
        parser.error(f"{args.openai!r} exists; pass --overwrite to replace it")
    try:
        out = convert_zero_checkpoint(args.zero_dir, args.out, tag=args.tag, overwrite=args.overwrite)
        print(f"wrote {out}")
        if args.openai:
            print(f"wrote {export_openai(out, args.openai, prefix=args.prefix, half=args.half, overwrite=args.overwrite)}")
    except (FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"clipl convert: error: {e}", file=sys.stderr)
        return 2
    return 0
