"""Eval data: ImageFolder and WebDataset eval shards, sharding, preprocessing, prompts, JSON."""

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipl.eval.datasets import EvalImageDataset, load_image, scan_image_folder, scan_shards, shard_indices
from clipl.eval.prompts import imagenet_classnames, list_template_sets, load_templates
from clipl.eval.results import format_table, read_results, write_result
from clipl.eval.specs import resolve, resolve_probe


def _png(colour, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def folder(tmp_path):
    for c, colour in (("golden_retriever", "yellow"), ("tabby_cat", "gray"), ("red_fox", "red")):
        (tmp_path / "set" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "set" / c / f"{i}.png").write_bytes(_png(colour))
    return tmp_path / "set"


def test_image_folder_classnames_and_labels(folder):
    s = scan_image_folder(folder)
    assert s.name == "set" and s.classnames == ["golden retriever", "red fox", "tabby cat"]
    assert [x.label for x in s.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    (sz,) = resolve(str(folder), "zeroshot")
    assert sz.classnames == s.classnames
    (folder / "classnames.txt").write_text("dog\nfox\ncat\n")
    assert scan_image_folder(folder).classnames == ["dog", "fox", "cat"]
    (folder / "classnames.txt").write_text("dog\n")
    with pytest.raises(ValueError, match="1 names for 3 class folders"):
        scan_image_folder(folder)
    item = EvalImageDataset(s, 32)[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert item["image"][:, 0, 0].tolist() == [255, 0, 0] and item["label"] == 1


def test_webdataset_eval_shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    samples = [(f"s{i:03d}", {"png": _png((i * 20, 0, 0)), "cls": str(i % 2).encode(),
                              "json": json.dumps({"captions": [f"cap {i} a", f"cap {i} b"]}).encode()}) for i in range(5)]
    _tar(d / "000.tar", samples[:3])
    _tar(d / "001.tar", samples[3:])
    with pytest.raises(ValueError, match="classnames.txt"):
        resolve(str(d / "{000..001}.tar"), "zeroshot")
    (d / "classnames.txt").write_text("even\nodd\n")
    (s,) = resolve(f"mine={d}/{{000..001}}.tar", "zeroshot")
    assert s.name == "mine" and s.classnames == ["even", "odd"] and [x.label for x in s.samples] == [0, 1, 0, 1, 0]
    (r,) = resolve(str(d), "retrieval")
    assert r.samples[4].captions == ["cap 4 a", "cap 4 b"]
    ds = EvalImageDataset(r, 16, tokenize=lambda caps: torch.arange(len(caps))[:, None].repeat(1, 4), max_captions=3)
    item = ds[1]
    assert item["text"].shape == (3, 4) and item["text_valid"].tolist() == [True, True, False]
    assert item["image"][0, 8, 8].item() == 20
    _tar(d / "002.tar", [("bad", {"png": _png("red"), "cls": b"x"})])
    with pytest.raises(ValueError, match="not an ASCII integer"):
        scan_shards(str(d / "002.tar"))
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_shards(str(d / "{005..006}.tar"))


def test_linear_probe_splits(folder, tmp_path):
    (p,) = resolve_probe(str(folder), train_fraction=0.5, seed=0)
    assert sorted(p.train_indices + p.test_indices) == list(range(9)) and not set(p.train_indices) & set(p.test_indices)
    assert p.num_classes == 3
    root = tmp_path / "probe"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            (root / split / c / "0.png").write_bytes(_png("blue"))
    (q,) = resolve_probe(str(root))
    assert q.train.samples[0].image.endswith("train/a/0.png") and q.test.samples[1].image.endswith("test/b/0.png")


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (2, 4), (7, 2)])
def test_shard_indices_cover_each_sample_once(n, world):
    seen = []
    for r in range(world):
        idx, valid = shard_indices(n, r, world)
        assert len(idx) == math.ceil(n / world)  # equal forwards on every rank
        seen += [i for i, v in zip(idx, valid) if v]
    assert sorted(seen) == list(range(n))


def test_load_image_matches_torchvision_resize_crop(tmp_path):
    tv = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (50, 77, 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    ref = tv.Compose([tv.Resize(32, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(32), tv.PILToTensor()])(img)
    assert torch.equal(load_image(str(tmp_path / "x.png"), 32), ref)


def test_prompts_builtin_and_files(tmp_path):
    assert len(load_templates("openai")) == 80 and len(load_templates("openai7")) == 7
    assert load_templates("openai7")[0] == "itap of a {}."
    assert len(imagenet_classnames()) == 1000 and imagenet_classnames()[0] == "tench"
    assert {"openai", "openai7", "shapes", "plain"} <= set(list_template_sets())
    assert all("{}" in t for t in load_templates("shapes"))
    f = tmp_path / "t.txt"
    f.write_text("a {} here\n\nthe {}\n")
    assert load_templates(str(f)) == ["a {} here", "the {}"]
    f.write_text("no slot\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(str(f))
    with pytest.raises(ValueError, match="Did you mean 'openai'"):
        load_templates("opnai")


def test_results_json(tmp_path):
    p = write_result(tmp_path, "shapes/x", "linear_probe", {"acc1": 0.5, "acc5": float("nan"), "weight_decay": 0.1},
                     model="m", pretrained="ck", step=3)
    rec = json.loads(p.read_text())
    assert p.name == "linear_probe_shapes_x_step00000003.json"
    assert rec == {"dataset": "shapes/x", "model": "m", "pretrained": "ck", "task": "linear_probe",
                   "metrics": {"lp_acc1": 0.5, "lp_acc5": None, "weight_decay": 0.1}, "language": "en", "step": 3}
    assert write_result(tmp_path, "shapes/x", "linear_probe", {"acc1": 0.6}, step=3).name.endswith("_1.json")
    assert [r["metrics"].get("lp_acc1") for r in read_results(tmp_path)] == [0.5, 0.6]
    with pytest.raises(ValueError, match="unknown eval task"):
        write_result(tmp_path, "d", "zero", {})
    assert "acc1=50.00" in format_table([("zeroshot", "d", {"acc1": 0.5})])
