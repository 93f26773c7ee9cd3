"""Shard URLs: pipe: commands, fsspec URLs, brace expansion and globs; failing pipes count as unreadable."""

from __future__ import annotations

from collections import Counter

import fsspec
import pytest

from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from clipl.data.webdataset import expand_pattern
from datafixtures import stand_in_tokenizer, write_shards


def _val_keys(pattern, **kw):
    cfg = DataConfig(val=pattern, num_workers=0, **kw)
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, tokenizer=stand_in_tokenizer, batch_size=4)
    dm.setup()
    keys, skipped = [], Counter()
    for b in dm.val_dataloader():
        keys += b["key"]
        skipped.update(b["skipped"])
    return keys, dict(skipped)


def test_pipe_fsspec_and_local_give_the_same_samples(tmp_path):
    write_shards(tmp_path, [5, 6])
    local, _ = _val_keys(str(tmp_path / "s-{000..001}.tar"))
    piped, _ = _val_keys(f"pipe:cat {tmp_path}/s-{{000..001}}.tar")
    fs = fsspec.filesystem("memory")
    for s in range(2):
        fs.pipe(f"/clipl-test/s-{s:03d}.tar", (tmp_path / f"s-{s:03d}.tar").read_bytes())
    remote, _ = _val_keys("memory://clipl-test/s-{000..001}.tar", epoch_size=11)
    assert local == piped == remote and len(local) == 11


def test_failing_pipe_is_an_unreadable_shard(tmp_path):
    write_shards(tmp_path, [5])
    keys, skipped = _val_keys(f"pipe:cat {tmp_path}/s-000.tar::pipe:exit 3", epoch_size=5)
    assert len(keys) == 5 and skipped == {"unreadable_shard": 1}


def test_expansion_and_globs(tmp_path):
    write_shards(tmp_path, [1, 1, 1])
    assert len(expand_pattern(str(tmp_path / "s-{000..002}.tar"))) == 3
    assert expand_pattern(str(tmp_path / "s-*.tar")) == [str(tmp_path / f"s-{i:03d}.tar") for i in range(3)]
    with pytest.raises(FileNotFoundError, match=r"data.val: shard pattern .*x-\*.tar' matched no files"):
        expand_pattern(str(tmp_path / "x-*.tar"), "data.val")
