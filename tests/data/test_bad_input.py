"""Bad input is skipped and counted per reason, never fatal; the skip-rate limit aborts clearly."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from clipl.cli.data import main as data_cli
from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from clipl.data.shapes import write_tar

from datafixtures import jpeg, stand_in_tokenizer

GOOD = 10
EXPECTED = {"corrupt_image": 1, "not_an_image": 1, "decompression_bomb": 1, "empty_caption": 2,
            "bad_caption_encoding": 1, "missing_image": 1, "missing_caption": 1,
            "missing_shard": 1, "unreadable_shard": 1}
MAX_PIXELS = 10_000  # the "bomb" below is 200x200 = 40,000 pixels


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (200, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def bad_source(tmp_path):
    good = [(f"good{i:02d}", {"jpg": jpeg(seed=i), "txt": f"a good caption {i}".encode()}) for i in range(GOOD)]
    full = jpeg(side=64, seed=99)
    bad = [
        ("truncated", {"jpg": full[: len(full) // 2], "txt": b"truncated jpeg"}),
        ("html", {"jpg": b"<!DOCTYPE html><html><body>404 not found</body></html>", "txt": b"an html page"}),
        ("bomb", {"png": _bomb(), "txt": b"a huge image"}),
        ("empty", {"jpg": jpeg(seed=50), "txt": b""}),
        ("blank", {"jpg": jpeg(seed=51), "txt": b"  \n\t "}),
        ("latin1", {"jpg": jpeg(seed=52), "txt": "caf\xe9 cr\xe8me".encode("latin-1")}),
        ("noimage", {"txt": b"caption without an image"}),
        ("nocaption", {"jpg": jpeg(seed=53)}),
    ]
    # Interleave so bad samples sit between good ones.
    samples = [x for pair in zip(good, bad + [None] * (len(good) - len(bad))) for x in pair if x is not None]
    write_tar(tmp_path / "bad-000.tar", samples)
    (tmp_path / "bad-001.tar").write_bytes(b"this is not a tar archive" * 40)  # unreadable
    # bad-002.tar is missing
    return str(tmp_path / "bad-{000..002}.tar")


def _dm(source, **kw):
    cfg = DataConfig(train=source, val=source, num_workers=0, shuffle_buffer=0, epoch_size=GOOD,
                     max_image_pixels=MAX_PIXELS, max_skip_rate=1.0, **kw)
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, tokenizer=stand_in_tokenizer, batch_size=1)
    dm.setup()
    return dm


@pytest.mark.parametrize("split", ["train", "val"])
def test_exactly_the_good_samples_come_out(bad_source, split):
    dm = _dm(bad_source)
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    keys, skipped = [], Counter()
    for b in loader:
        keys += b["key"]
        skipped.update(b["skipped"])
    assert sorted(keys) == [f"good{i:02d}" for i in range(GOOD)]
    if split == "train":
        # Training stops reading once its quota (epoch_size) is met, so shards after the bad one in the
        # epoch's shard order may not be opened at all.
        assert {k: v for k, v in skipped.items() if not k.endswith("_shard")} == {
            k: v for k, v in EXPECTED.items() if not k.endswith("_shard")}
        assert skipped["missing_shard"] <= 1 and skipped["unreadable_shard"] <= 1
    else:
        assert dict(skipped) == EXPECTED


def test_inspect_json_reports_counts(bad_source, capsys):
    assert data_cli(["inspect", bad_source, "--json", "--max-image-pixels", str(MAX_PIXELS)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == 3
    assert report["samples"] == GOOD
    assert report["skipped"] == EXPECTED
    assert report["caption_words"]["min"] == 4
    assert data_cli(["inspect", bad_source, "--max-image-pixels", str(MAX_PIXELS)]) == 0
    assert "skipped: 10" in capsys.readouterr().out


def test_skip_rate_aborts_with_counts(bad_source):
    cfg_kw = dict(max_skip_rate=0.05, skip_check_after=5)
    dm = CLIPDataModule(DataConfig(train=bad_source, num_workers=0, shuffle_buffer=0, epoch_size=GOOD,
                                   max_image_pixels=MAX_PIXELS, **cfg_kw), 16, 8, tokenizer=lambda t, n: None,
                        batch_size=1)
    dm.setup()
    with pytest.raises(RuntimeError, match=r"max_skip_rate=5.0%.*not_an_image=1"):
        for _ in dm.train_dataloader():
            pass


def test_pattern_matching_nothing_names_it(tmp_path):
    pattern = str(tmp_path / "nothing-{000..009}.tar")
    with pytest.raises(FileNotFoundError, match="data.train: shard pattern .*nothing-\\{000..009\\}.tar.* matched no files"):
        _dm(pattern)
