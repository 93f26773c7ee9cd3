"""Table sources (CSV/TSV/parquet): default columns, relative paths, missing files, wrong columns."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from datafixtures import jpeg, stand_in_tokenizer


@pytest.fixture
def table_dir(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(12):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(jpeg(seed=i))
    return tmp_path


def _rows(root, absolute_first=False):
    rows = [{"filepath": f"images/{i}.jpg", "title": f"picture number {i}"} for i in range(12)]
    if absolute_first:
        rows[0]["filepath"] = str(root / "images" / "0.jpg")
    rows.append({"filepath": "images/missing.jpg", "title": "gone"})
    rows.append({"filepath": "images/3.jpg", "title": "   "})
    return rows


def _keys_and_skips(cfg, batch_size=64):
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, tokenizer=stand_in_tokenizer, batch_size=batch_size)
    dm.setup()
    keys, skipped = [], Counter()
    for b in dm.val_dataloader():
        keys += b["key"]
        skipped.update(b["skipped"])
        assert b["image"].shape[1:] == (3, 16, 16)
    return keys, dict(skipped)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_table_formats_and_relative_paths(table_dir, fmt):
    df = pd.DataFrame(_rows(table_dir, absolute_first=True))
    path = table_dir / f"pairs.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    keys, skipped = _keys_and_skips(DataConfig(val=str(path), num_workers=0, max_skip_rate=1.0), batch_size=5)
    assert keys == [f"row{i:09d}" for i in range(12)]
    assert skipped == {"missing_file": 1, "empty_caption": 1}


def test_custom_columns_separator_and_list_captions(table_dir):
    path = table_dir / "pairs.txt.csv"
    pd.DataFrame({"img": [f"images/{i}.jpg" for i in range(4)], "cap": ["a;b"] * 4}).to_csv(path, sep=";", index=False)
    with pytest.raises(KeyError, match=r"data.img_column='filepath' is not a column of .*columns: \['img', 'cap'\]"):
        _keys_and_skips(DataConfig(val=str(path), num_workers=0, separator=";"))
    # list cells (parquet) give one caption chosen per sample
    pq = table_dir / "lists.parquet"
    pd.DataFrame({"filepath": [f"images/{i}.jpg" for i in range(4)],
                  "title": [["first caption", "second caption"]] * 4}).to_parquet(pq)
    cfg = DataConfig(train=str(pq), num_workers=0, table_rows_per_shard=1)
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, tokenizer=lambda t, n: t, batch_size=4)
    dm.setup()
    captions = [c for _ in range(4) for b in dm.train_dataloader() for c in b["text"]]
    assert set(captions) == {"first caption", "second caption"}


def test_table_splits_into_virtual_shards_for_workers(table_dir):
    path = table_dir / "pairs.csv"
    pd.DataFrame(_rows(table_dir)[:12]).to_csv(path, index=False)
    cfg = DataConfig(train=str(path), num_workers=2, table_rows_per_shard=3)
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, tokenizer=stand_in_tokenizer, batch_size=2)
    dm.setup()
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert sorted(keys) == [f"row{i:09d}" for i in range(12)]
