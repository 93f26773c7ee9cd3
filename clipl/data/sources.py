"""Turn a `data.train` / `data.val` string into sources: "shapes", a table file, or shard patterns joined by "::"."""

from __future__ import annotations

from typing import Union

from clipl.data.config import DataConfig
from clipl.data.table import TableSource, is_table
from clipl.data.webdataset import WebDatasetSource

Source = Union[WebDatasetSource, TableSource]
SHAPES = "shapes"
"""The literal that selects the built-in captioned-shapes set."""


def make_sources(spec: str, cfg: DataConfig, split: str = "train", field: str = "data.train",
                 readers: int = 1) -> list[Source]:
    """One source per "::"-separated part of `spec`; `split` picks the shapes split ("train"/"val"/eval name);
    `readers` (ranks x workers) sets how tables are cut into equal shards."""
    if not spec or not spec.strip():
        raise ValueError(f"{field} is empty; give shard pattern(s), a table file or 'shapes'")
    out: list[Source] = []
    for part in spec.split("::"):
        part = part.strip()
        if part == SHAPES:
            from clipl.data.shapes import ensure_shapes

            ds = ensure_shapes(cfg.shapes)
            pattern = {"train": ds.train, "val": ds.val}.get(split) or ds.eval_splits[split]
            out.append(WebDatasetSource(pattern, cfg.image_key, cfg.caption_key, field))
        elif is_table(part):
            out.append(TableSource(part, cfg.img_column, cfg.caption_column, cfg.separator,
                                   cfg.table_rows_per_shard, field, readers))
        else:
            out.append(WebDatasetSource(part, cfg.image_key, cfg.caption_key, field))
    return out
