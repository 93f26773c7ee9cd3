"""The built-in captioned-shapes set: layout, determinism, captions that name the shapes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from braceexpand import braceexpand

from clipl.cli.data import main as data_cli
from clipl.data.config import DataConfig, ShapesConfig
from clipl.data.shapes import config_hash, ensure_shapes, write_shapes
from clipl.data.shapes_render import COLOURS, SHAPES

TINY = dict(train_size=60, val_size=20, eval_size=24, samples_per_shard=16, num_procs=1)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_generations_are_byte_identical(tmp_path):
    a = files(write_shapes(ShapesConfig(**TINY), tmp_path / "a").root)
    b = files(write_shapes(ShapesConfig(**(TINY | {"num_procs": 2})), tmp_path / "b").root)  # procs don't matter
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k] == b[k] for k in a)
    c = files(write_shapes(ShapesConfig(**TINY, seed=1), tmp_path / "c").root)
    assert c["train/shard-000000.tar"] != a["train/shard-000000.tar"]


def test_layout_labels_and_captions(tmp_path):
    ds = ensure_shapes(ShapesConfig(**TINY, cache_dir=str(tmp_path)))
    assert ds.root == tmp_path / config_hash(ShapesConfig(**TINY))
    assert ds.classnames["shape"] == SHAPES and len(SHAPES) >= 8 and len(ds.classnames["colour"]) >= 8
    assert all("{}" in t for t in ds.templates)
    train_shards = list(braceexpand(ds.train))
    assert len(train_shards) == 4  # 60 samples / 16 per shard
    sizes = json.loads((ds.root / "train" / "sizes.json").read_text())
    assert sum(sizes.values()) == 60 and set(sizes) == {Path(s).name for s in train_shards}
    assert (ds.root / "shape" / "classnames.txt").read_text().split("\n")[:8] == SHAPES
    with tarfile.open(list(braceexpand(ds.eval_splits["shape"]))[0]) as tar:
        names = tar.getnames()
        assert {n.split(".", 1)[1] for n in names} == {"jpg", "txt", "json", "cls"}
        for n in names:
            if n.endswith(".json"):
                meta = json.loads(tar.extractfile(n).read())
                label = int(tar.extractfile(n.replace(".json", ".cls")).read())
                caption = tar.extractfile(n.replace(".json", ".txt")).read().decode()
                (obj,) = meta["objects"]
                assert SHAPES[label] == obj["shape"] and obj["colour"] in COLOURS
                assert caption == meta["captions"][0] and len(meta["captions"]) == 5
                assert all(obj["shape"] in c for c in meta["captions"])
    # the second call finds the cache
    assert ensure_shapes(ShapesConfig(**TINY, cache_dir=str(tmp_path))).root == ds.root


def test_train_captions_name_every_object_and_vary(tmp_path):
    ds = write_shapes(ShapesConfig(**TINY), tmp_path)
    captions, n_two = set(), 0
    for shard in braceexpand(ds.train):
        with tarfile.open(shard) as tar:
            for n in tar.getnames():
                if n.endswith(".json"):
                    meta = json.loads(tar.extractfile(n).read())
                    n_two += len(meta["objects"]) == 2
                    for c in meta["captions"]:
                        captions.add(c)
                        assert all(o["shape"] in c for o in meta["objects"]), c
    assert len(captions) > 250 and 10 < n_two < 50


def _train_members(root: Path, ext: str) -> dict[str, bytes]:
    out = {}
    for shard in sorted((root / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            out |= {n: tar.extractfile(n).read() for n in tar.getnames() if n.endswith(ext)}
    return out


@pytest.mark.parametrize("prob", [0.0, 0.5, 1.0])
def test_caption_colour_prob_changes_only_the_words(tmp_path, prob):
    base = write_shapes(ShapesConfig(**TINY), tmp_path / "base").root
    other = write_shapes(ShapesConfig(**TINY, caption_colour_prob=prob), tmp_path / "other").root
    assert _train_members(other, ".jpg") == _train_members(base, ".jpg")  # same pixels, same scenes
    named = total = 0
    for raw in _train_members(other, ".json").values():
        meta = json.loads(raw)
        for c in meta["captions"]:
            assert all(o["shape"] in c for o in meta["objects"]), c
            # Two-object captions always describe both as "[size] [colour] shape" (some single-object
            # templates spell the colour out elsewhere: "a red shape: ...").
            if len(meta["objects"]) == 2:
                total += 2
                named += sum(f"{o['colour']} {o['shape']}" in c for o in meta["objects"])
    assert total > 100 and abs(named / total - prob) < 0.1, (named, total)
    assert config_hash(ShapesConfig(**TINY, caption_colour_prob=prob)) != config_hash(ShapesConfig(**TINY))
    with pytest.raises(ValueError, match="caption_colour_prob"):
        write_shapes(ShapesConfig(**TINY, caption_colour_prob=1.5), tmp_path / "bad")


def test_shapes_through_the_datamodule(tmp_path, tok):
    from clipl.data.datamodule import CLIPDataModule

    cfg = DataConfig(train="shapes", val="shapes", num_workers=0,
                     shapes=ShapesConfig(**TINY, cache_dir=str(tmp_path)))
    dm = CLIPDataModule(cfg, image_size=32, context_length=12, tokenizer=tok, batch_size=8)
    dm.prepare_data()
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (8, 3, 32, 32) and b["image"].dtype.is_floating_point is False
    assert b["text"].shape == (8, 12)
    val = [k for b in dm.val_dataloader() for k in b["key"]]
    assert len(val) == 20 and val == sorted(val)
    # the images are not blank: objects and background differ
    assert float(b["image"].float().std()) > 20


def test_json_captions_pick_one_per_epoch(tmp_path):
    from clipl.data.datamodule import CLIPDataModule
    from clipl.data.shapes import tiny_config

    cfg = DataConfig(train="shapes", caption_key="json:captions", num_workers=0,
                     shapes=tiny_config(cache_dir=str(tmp_path)))
    dm = CLIPDataModule(cfg, image_size=32, context_length=12, tokenizer=lambda texts, n: list(texts),
                        batch_size=64)
    dm.setup()
    epochs = [{k: c for b in dm.train_dataloader() for k, c in zip(b["key"], b["text"])} for _ in range(3)]
    ds = ensure_shapes(cfg.shapes)
    captions = {}
    for shard in braceexpand(ds.train):
        with tarfile.open(shard) as tar:
            for n in tar.getnames():
                if n.endswith(".json"):
                    captions[n[:-5]] = json.loads(tar.extractfile(n).read())["captions"]
    keys = set(epochs[0]) & set(epochs[1]) & set(epochs[2])
    assert len(keys) > 100
    assert all(e[k] in captions[k] for e in epochs for k in keys)
    changed = sum(len({e[k] for e in epochs}) > 1 for k in keys) / len(keys)
    assert changed > 0.5  # 5 captions, some of them equal: most samples change caption across 3 epochs


def test_cli_writes_the_set(tmp_path, capsys):
    assert data_cli(["shapes", "--out", str(tmp_path), "--train-size", "20", "--val-size", "4",
                     "--eval-size", "8", "--num-procs", "1"]) == 0
    assert "wrote 20 train" in capsys.readouterr().out
    assert json.loads((tmp_path / "train" / "sizes.json").read_text()) == {"shard-000000.tar": 20}


@pytest.mark.slow
def test_default_set_generates_in_under_a_minute(tmp_path):
    """Measured in CPU seconds (this process + its generator processes), so a busy machine does not fail it."""
    import resource
    import time

    def cpu():
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    c0, t0 = cpu(), time.perf_counter()
    ds = write_shapes(ShapesConfig(num_procs=2), tmp_path)
    used = cpu() - c0
    assert sum(json.loads((ds.root / "train" / "sizes.json").read_text()).values()) == 20000
    assert used / 2 < 60, f"{used:.0f} CPU-s ({time.perf_counter() - t0:.0f} s wall)"
