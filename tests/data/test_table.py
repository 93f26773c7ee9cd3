"""Table sources (CSV/TSV/parquet): default columns, relative paths, missing files, wrong columns, and
even sharding: every row drawn equally often whatever the table's length and the worker count."""

from __future__ import annotations

from collections import Counter

import lightning as L
import pandas as pd
import pytest
import torch

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


class _Recorder(L.LightningModule):
    """Counts every sample key that reaches a training step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: Counter = Counter()

    def training_step(self, batch, idx):
        self.seen.update(batch["key"])
        return (self.w - batch["image"].float().mean() / 255) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("workers", [2, 4])
def test_uneven_table_every_row_drawn_equally_often_in_an_epoch(tmp_path, workers):
    # 1,403 rows with the default data.table_rows_per_shard=1000 used to become shards of 1,000 and 403
    # rows: with 2 workers the small one was drawn twice per epoch and 304 rows of the big one never;
    # 4 workers were refused. Now: equal shards (351/350 rows), one row per draw, trained through Lightning.
    n = 1403
    (tmp_path / "images").mkdir()
    for i in range(12):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(jpeg(side=8, seed=i))
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"filepath": [f"images/{i % 12}.jpg" for i in range(n)],
                  "title": [f"row {i}" for i in range(n)]}).to_csv(path, index=False)
    cfg = DataConfig(train=str(path), num_workers=workers, shuffle_buffer=64)
    dm = CLIPDataModule(cfg, image_size=8, context_length=8, tokenizer=stand_in_tokenizer, batch_size=8)
    dm.setup()
    sizes = dm._train.sizes
    assert len(sizes) % workers == 0 and max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    model = _Recorder()
    L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False).fit(model, datamodule=dm)
    counts = [model.seen.get(f"row{i:09d}", 0) for i in range(n)]
    mean = sum(counts) / n
    assert sum(counts) == (n // (8 * workers)) * 8 * workers  # whole batches, every worker the same number
    assert all(abs(c - mean) <= 1 for c in counts), Counter(counts)
    assert max(counts) == 1  # no row twice in one epoch
