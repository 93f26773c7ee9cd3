"""`clipl data ...` commands: `inspect SOURCE [--json]`, `pack SOURCE --out DIR`, `example --out DIR`
and `shapes --out DIR`."""

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
    pk = sub.add_parser("pack", help="images + captions (a table, or image.jpg + image.txt pairs) -> shards")
    pk.add_argument("source", help="a .csv/.tsv/.parquet table, or a folder of image files with same-named .txt")
    pk.add_argument("--out", required=True, help="folder to write {00000..N}.tar and *_stats.json into")
    pk.add_argument("--samples-per-shard", type=int, default=1000, help="samples per .tar shard")
    pk.add_argument("--img-column", default=DataConfig.img_column, help="table image-path column")
    pk.add_argument("--caption-column", default=DataConfig.caption_column, help="table caption column")
    pk.add_argument("--separator", default=None, help="table field delimiter (default: from the suffix)")
    pk.add_argument("--seed", type=int, default=0, help="seed of the order samples are dealt to shards")
    ex = sub.add_parser("example", help="write a small example of your own data (image/caption pairs and a "
                                        "labelled ImageFolder) to try `pack` and recipes/own_data.py")
    ex.add_argument("--out", required=True, help="folder to write images/, captions.csv and labelled/ into")
    ex.add_argument("--pairs", type=int, default=800, help="image + caption pairs")
    ex.add_argument("--per-class", type=int, default=30, help="labelled images per class (10 colour classes)")
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
    if args.command == "pack":
        from clipl.data.pack import pack

        try:
            st = pack(args.source, args.out, args.samples_per_shard, args.img_column, args.caption_column,
                      args.separator, args.seed)
        except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
            print(f"clipl data pack: {e.args[0] if e.args else e}", file=sys.stderr)
            return 2
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(st.failed.items())) or "none"
        print(f"packed {st.samples} samples into {len(st.shards)} shard(s) in {st.out_dir} in {st.seconds:.1f} s "
              f"(skipped: {skipped})\ntrain with: data.train={st.out_dir}  (or '{st.pattern}')")
        return 0
    if args.command == "example":
        from clipl.data.example import write_example

        try:
            paths = write_example(args.out, args.pairs, args.per_class)
        except FileExistsError as e:
            print(f"clipl data example: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.pairs} pairs to {paths['images']} (also as {paths['table']}) and "
              f"{10 * args.per_class} labelled images in 10 class folders to {paths['labelled']}")
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
