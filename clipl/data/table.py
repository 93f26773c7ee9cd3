"""Tables of image paths and captions (CSV/TSV/parquet) as a source.

Rows are cut into equal virtual shards (sizes differ by at most one row), a multiple of the number
of readers (ranks x workers) of at most `rows_per_shard` rows each, so tables go through the same
shard shuffling, rank/worker splitting and resume logic as tar shards and every reader gets the same
number of rows, whatever the table's length. Image files are read only after the
shuffle buffer, so replaying a stream on resume touches no image files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from clipl.data.skip import BadSample, SkipCounter
from clipl.data.webdataset import Raw, pick_caption

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None}


def is_table(path: str) -> bool:
    return Path(path.split("::")[0]).suffix.lower() in TABLE_SUFFIXES


def read_table(path: str, img_column: str, caption_column: str, separator: Optional[str] = None,
               field: str = "data.train"):
    """(image paths, captions) columns of a table; a wrong column name lists the columns that exist."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{field}: table {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(p)
        except ImportError as e:
            raise ImportError(f"{field}: reading the .parquet table {str(p)!r} needs pyarrow: "
                              f"pip install 'clipl[table]' ({e})") from None
    else:
        sep = separator if separator is not None else TABLE_SUFFIXES[suffix]
        # Everything as text: captions such as "NaN" or "1" must stay strings.
        df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False)
    for name, col in (("data.img_column", img_column), ("data.caption_column", caption_column)):
        if col not in df.columns:
            raise KeyError(f"{name}={col!r} is not a column of {p}; columns: {list(map(str, df.columns))}")
    return df[img_column].tolist(), df[caption_column].tolist()


class TableSource:
    """Rows of (image path, caption); relative paths resolve against the table's folder."""

    def __init__(self, path: str, img_column: str = "filepath", caption_column: str = "title",
                 separator: Optional[str] = None, rows_per_shard: int = 1000, field: str = "data.train",
                 readers: int = 1):
        self.pattern = path
        self.root = Path(path).expanduser().parent
        self.paths, self.captions = read_table(path, img_column, caption_column, separator, field)
        n = len(self.paths)
        if n == 0:
            raise ValueError(f"{field}: table {path!r} has no rows")
        readers = max(1, readers)
        count = min(n, readers * -(-n // (readers * rows_per_shard)))
        bounds = [n * i // count for i in range(count + 1)]
        self.shards = [f"{path}#rows={a}:{b}" for a, b in zip(bounds, bounds[1:])]
        self._ranges = {u: (a, b) for u, a, b in zip(self.shards, bounds, bounds[1:])}
        self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]

    def iter_shard(self, shard: str, counter: Optional[SkipCounter] = None) -> Iterator[Raw]:
        a, b = self._ranges[shard]
        for i in range(a, b):
            yield f"row{i:09d}", {"path": self.paths[i], "caption": self.captions[i]}

    def extract(self, members: dict, rng: np.random.Generator) -> tuple[bytes, str]:
        path = members["path"]
        if not isinstance(path, str) or not path.strip():
            raise BadSample("missing_image", "empty image path")
        full = path if os.path.isabs(path) else str(self.root / path)
        try:
            with open(full, "rb") as f:
                image = f.read()
        except FileNotFoundError:
            raise BadSample("missing_file", full) from None
        except OSError as e:
            raise BadSample("missing_file", f"{full}: {e}") from None
        cap = members["caption"]
        if cap is None or (isinstance(cap, float) and np.isnan(cap)):
            raise BadSample("missing_caption")
        return image, pick_caption(cap, rng)
