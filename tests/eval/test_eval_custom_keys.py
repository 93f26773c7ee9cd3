"""Evaluation reads WebDataset shards by the same member rules as training (clipl.data.wds_format): a set
written with other member names (``data.image_key=png data.caption_key=...``) evaluates exactly as the
same data in the default layout, in ``clipl eval`` and in the evaluation callbacks."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipl.callbacks import build_eval_callbacks
from clipl.cli import eval as eval_cli
from clipl.config.io import to_container
from clipl.config.schema import RunConfig
from clipl.data.config import DataConfig, ShapesConfig
from clipl.data.shapes import ensure_shapes, write_tar
from clipl.data.wds_format import Members
from clipl.eval.config import EvalConfig
from clipl.eval.datasets import load_image
from clipl.eval.runner import eval_mode, model_encoders, run_retrieval, run_zero_shot
from clipl.eval.specs import resolve

torch.set_num_threads(1)
KEYS = {"image_key": "png", "caption_key": "meta:captions"}  # every caption, from a JSON field of .meta


def _png(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(buf, format="PNG")  # lossless: the same pixels
    return buf.getvalue()


def _relayout(src: Path, dst: Path) -> Path:
    """The shards of ``src`` with members renamed: jpg -> png (re-encoded), txt -> caption, json -> meta."""
    dst.mkdir(parents=True)
    for shard in sorted(src.glob("*.tar")):
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
        renamed = {"jpg": "png", "txt": "caption", "json": "meta"}
        write_tar(dst / shard.name, [(k, {renamed.get(e, e): _png(v) if e == "jpg" else v for e, v in m.items()})
                                     for k, m in samples.items()])
    for extra in ("classnames.txt", "sizes.json"):
        if (src / extra).is_file():
            shutil.copy(src / extra, dst / extra)
    return dst


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    shapes = ShapesConfig(train_size=8, val_size=16, eval_size=24, samples_per_shard=12,
                          cache_dir=str(tmp / "shapes"), num_procs=1)
    ds = ensure_shapes(shapes)
    original = {"shape": Path(ds.eval_splits["shape"]).parent, "val": Path(ds.val).parent}
    custom = {split: _relayout(folder, tmp / f"custom_{split}") for split, folder in original.items()}
    return tmp, shapes, original, custom


def test_custom_members_index_the_same_samples(sets):
    _, _, original, custom = sets
    for split, task in (("shape", "zeroshot"), ("val", "retrieval")):
        (ref,) = resolve(str(original[split]), task)
        (got,) = resolve(str(custom[split]), task, members=Members.from_keys(**KEYS))
        assert [(s.label, s.captions) for s in got.samples] == [(s.label, s.captions) for s in ref.samples]
        assert got.classnames == ref.classnames and len(got.samples) >= 16
        assert torch.equal(load_image(got.samples[3].image, 32), load_image(ref.samples[3].image, 32))
    # data.caption_key=caption: the .caption text, which holds the first caption (the default layout's .txt)
    (one,) = resolve(str(custom["val"]), "retrieval", members=Members.from_keys("png", "caption"))
    (ref,) = resolve(str(original["val"]), "retrieval")
    assert [s.captions for s in one.samples] == [s.captions[:1] for s in ref.samples]
    assert any(len(s.captions) > 1 for s in ref.samples)  # so the two rules really differ
    with pytest.raises(ValueError, match="samples have no captions"):  # the default keys find no .txt/.json
        resolve(str(custom["val"]), "retrieval")


def _direct(model, original, ev):
    enc = model_encoders(model, "cpu")
    with eval_mode(model):
        zs = run_zero_shot(enc, resolve(str(original["shape"]), "zeroshot")[0], ev).metrics
        rt = run_retrieval(enc, resolve(str(original["val"]), "retrieval")[0], ev).metrics
    return zs, rt


def test_clipl_eval_reads_the_runs_member_keys(sets, capsys):
    from clipl.models import preset
    from clipl.models.clip import CLIPModel

    tmp, shapes, original, custom = sets
    ev = EvalConfig(zeroshot=[f"set={custom['shape']}"], retrieval=[f"set={custom['val']}"], batch_size=8,
                    num_workers=0)
    cfg = RunConfig(model=preset("tiny_vit"), data=DataConfig(shapes=shapes, **KEYS), eval=ev)
    torch.manual_seed(0)
    model = CLIPModel.from_config(cfg.model)
    ckpt = tmp / "run.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_container(cfg)}, "global_step": 3}, ckpt)
    assert eval_cli.main([str(ckpt), "--out", str(tmp / "out"), "--device", "cpu"]) == 0
    capsys.readouterr()
    zs, rt = _direct(model, original, ev)
    got = {p.name.split("_set_")[0]: json.loads(p.read_text())["metrics"] for p in (tmp / "out").glob("*.json")}
    assert got == {"zeroshot_classification": zs, "zeroshot_retrieval": rt}
    # a state dict without a run config: the keys come from the flags
    sd = tmp / "weights.pt"
    torch.save(model.state_dict(), sd)
    assert eval_cli.main([str(sd), "--model", "tiny_vit", "--device", "cpu", "--zeroshot", f"set={custom['shape']}",
                     "--image-key", "png", "--caption-key", "meta:captions", "--out", str(tmp / "flags")]) == 0
    (written,) = (tmp / "flags").glob("*.json")
    assert json.loads(written.read_text())["metrics"] == zs


def test_eval_callbacks_read_the_runs_member_keys(sets):
    from clipl.models import build_model

    _, shapes, original, custom = sets
    data = DataConfig(shapes=shapes, **KEYS)
    ev = EvalConfig(zeroshot=[str(custom["shape"])], retrieval=[str(custom["val"])], batch_size=8, num_workers=0)
    callbacks = build_eval_callbacks(ev, None, shapes=shapes, members=Members.of(data))
    torch.manual_seed(0)
    model = build_model("tiny_vit")
    enc = model_encoders(model, "cpu")
    zs, rt = _direct(model, original, ev)
    with eval_mode(model):
        for cb, run, expected in zip(callbacks, (run_zero_shot, run_retrieval), (zs, rt)):
            (s,) = cb.resolve()
            assert run(enc, s, ev).metrics == expected
