"""`clipl data ...` commands: `inspect SOURCE [--json]` and `shapes --out DIR`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Optional, Sequence

from clipl.data.config import DataConfig, ShapesConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipl data", description="Inspect data sources; write the built-in set.")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="count shards, samples and skipped samples of a source")
    ins.add_argument("source", help='shard pattern(s) joined by "::", a .csv/.tsv/.parquet table, or "shapes"')
    ins.add_argument("--json", action="store_true", help="print one JSON object (shards, samples, skipped, ...)")
    ins.add_argument("--limit", type=int, default=None, help="stop after this many good samples")
    ins.add_argument("--img-column", default=DataConfig.img_column, help="table image-path column")
    ins.add_argument("--caption-column", default=DataConfig.caption_column, help="table caption column")
    ins.add_argument("--caption-key", default=DataConfig.caption_key, help="shard caption member")
    ins.add_argument("--max-image-pixels", type=int, default=DataConfig.max_image_pixels,
                     help="images above this many pixels count as decompression bombs")
    sh = sub.add_parser("shapes", help="write the built-in captioned-shapes set as WebDataset shards")
    sh.add_argument("--out", required=True, help="folder to write train/, val/, shape/, colour/ into")
    for f in dataclasses.fields(ShapesConfig):
        if f.name in ("cache_dir",):
            continue
        sh.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; `argv` excludes the leading "data"."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "inspect":
        from clipl.data.inspect import format_report, inspect_source

        cfg = DataConfig(img_column=args.img_column, caption_column=args.caption_column, caption_key=args.caption_key,
                         max_image_pixels=args.max_image_pixels)
        try:
            report = inspect_source(args.source, cfg, args.limit)
        except (FileNotFoundError, KeyError, ValueError) as e:
            print(f"clipl data inspect: {e}", file=sys.stderr)
            return 2
        print(json.dumps(report) if args.json else format_report(report))
        return 0
    from clipl.data.shapes import write_shapes

    cfg = ShapesConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesConfig)
                          if f.name != "cache_dir"})
    t0 = time.perf_counter()
    ds = write_shapes(cfg, args.out)
    print(f"wrote {cfg.train_size} train, {cfg.val_size} val, 2 x {cfg.eval_size} eval samples to {ds.root} "
          f"in {time.perf_counter() - t0:.1f} s\ntrain: {ds.train}\nval:   {ds.val}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
