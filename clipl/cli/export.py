"""`clipl export SOURCE OUT --format openai|open_clip|hf`: hand clipl weights to other tools.

The formats and what reads them are described in clipl.models.export, which does the work.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from clipl.models.export import FORMATS, export


def main(argv: Optional[list[str]] = None) -> int:
    """``clipl export SOURCE OUT --format openai|open_clip|hf [--model NAME] [--half] [--overwrite]``."""
    p = argparse.ArgumentParser(prog="clipl export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="clipl .ckpt, ZeRO checkpoint folder, weights file, open_clip or HF folder")
    p.add_argument("out", help="output file (openai) or new folder (open_clip, hf)")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--model", help="clipl preset or open_clip model name: needed only for a bare state dict")
    p.add_argument("--half", action="store_true", help="store floating tensors in fp16")
    p.add_argument("--overwrite", action="store_true", help="replace an existing openai-format file")
    p.add_argument("--trust-torchscript", action="store_true", help="allow reading a TorchScript archive")
    args = p.parse_args(argv)
    try:
        path = export(args.source, args.out, args.fmt, model=args.model, half=args.half, overwrite=args.overwrite,
                      trust_torchscript=args.trust_torchscript)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError) as err:
        print(f"clipl export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
