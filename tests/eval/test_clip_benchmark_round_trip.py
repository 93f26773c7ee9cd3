"""A tiny clipl run -> open_clip export -> open_clip's own zero-shot code and clip_benchmark's layouts.

One short run (a few CPU steps on a small shapes set) is shared by the tests: its checkpoints are
exported with `clipl export`, evaluated by open_clip's zero-shot classifier, and by `clipl eval` on a
dataset folder written by clip_benchmark's own WebDataset converter; `clip_benchmark build` then
tabulates clipl's and clip_benchmark's result files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("clip_benchmark")
# One ~40 s training run shared by both tests (~80 s in all on a shared 2-core CPU).
pytestmark = pytest.mark.slow

STEPS = 6


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from clipl.run import run

    tmp = tmp_path_factory.mktemp("cbrun")
    overrides = [
        "data.shapes.train_size=192", "data.shapes.val_size=32", "data.shapes.eval_size=160",
        "data.shapes.samples_per_shard=64", "data.shapes.num_procs=1", f"data.shapes.cache_dir={tmp / 'shapes'}",
        "data.num_workers=0", "trainer.micro_batch_size=32", f"trainer.max_steps={STEPS}",
        "optim.warmup_steps=2", "eval.zeroshot=[shapes:shape]", "eval.linear_probe=[]", "eval.num_workers=0",
        "logging.backend=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "checkpoint.every_n_steps=3", "checkpoint.keep_last=-1", f"out_dir={tmp / 'run'}",
    ]
    torch.set_num_threads(2)
    assert run("quickstart", overrides) == 0
    out = tmp / "run"
    ckpts = {}
    for p in out.rglob("*.ckpt"):
        if p.is_file() and not p.is_symlink():
            ckpts[torch.load(p, map_location="cpu", weights_only=True)["global_step"]] = p
    logged = json.loads((out / "eval" / f"zeroshot_classification_shapes_shape_step{STEPS:08d}.json").read_text())
    return tmp, out, ckpts, logged


def _shape_split(run_dir: Path):
    from clipl.config.io import run_config_from
    from clipl.eval.specs import resolve
    from clipl.models.sources import read_source

    ckpt = next(p for p in run_dir.rglob("*.ckpt") if p.is_file())
    shapes = run_config_from(read_source(ckpt).saved_config).data.shapes
    return resolve("shapes:shape", "zeroshot", shapes)[0]


def _pil(sample):
    import io

    from PIL import Image

    path, offset, size = sample.image
    with open(path, "rb") as f:
        f.seek(offset)
        return Image.open(io.BytesIO(f.read(size))).convert("RGB")


def test_open_clip_zero_shot_equals_clipl_logged_accuracy(tiny_run):
    from clipl.models.export import export

    tmp, run_dir, ckpts, logged = tiny_run
    assert logged["model"] == "tiny_rn" and logged["pretrained"].endswith(f"@step{STEPS}")
    out = export(ckpts[STEPS], tmp / "oc", "open_clip")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    split = _shape_split(run_dir)
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(
            model, tokenizer, split.classnames, [lambda c, t=t: t.format(c) for t in split.templates],
            device="cpu", use_tqdm=False)
        images = torch.stack([preprocess(_pil(s)) for s in split.samples])
        feats = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    labels = torch.tensor([s.label for s in split.samples])
    acc = ((feats @ classifier).argmax(dim=1) == labels).float().mean().item()
    assert abs(acc - logged["metrics"]["acc1"]) <= 1e-3, (acc, logged["metrics"]["acc1"])


class _Split(torch.utils.data.Dataset):
    """The shapes split as (PIL image, label) pairs with clip_benchmark's .classes/.templates."""

    def __init__(self, split):
        self.split = split
        self.classes = list(split.classnames)
        self.templates = [t.replace("{}", "{c}") for t in split.templates]

    def __len__(self):
        return len(self.split.samples)

    def __getitem__(self, i):
        return _pil(self.split.samples[i]), self.split.samples[i].label


@pytest.fixture(scope="module")
def cb_folder(tiny_run):
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset

    tmp, run_dir, _, _ = tiny_run
    root = tmp / "wds_shapes"
    # png: lossless, the same pixels as the shapes shards.
    convert_dataset(_Split(_shape_split(run_dir)), "test", str(root), transform=PIL_to_bytes("png"),
                    image_format="png", verbose=False)
    return root


def test_clipl_eval_reads_clip_benchmark_layout(tiny_run, cb_folder, capsys):
    from clipl.cli import eval as cli

    tmp, _, ckpts, logged = tiny_run
    assert (cb_folder / "test" / "nshards.txt").is_file() and (cb_folder / "zeroshot_classification_templates.txt").is_file()
    out = tmp / "cb_results"
    for step in sorted(ckpts):
        assert cli.main([str(ckpts[step]), "--zeroshot", str(cb_folder), "--out", str(out), "--device", "cpu",
                         "--num-workers", "0"]) == 0
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert [r["dataset"] for r in rows] == ["wds_shapes"] * len(ckpts)
    final = next(r for r in rows if r["step"] == STEPS)
    # The folder's own templates ({c} read as {}) and pixels: the run's logged accuracy exactly.
    assert final["metrics"]["acc1"] == pytest.approx(logged["metrics"]["acc1"], abs=1e-6)
    # clip_benchmark's templates JSON ({dataset: [templates with {c}]}) gives the same classifier.
    tpl = tmp / "templates.json"
    tpl.write_text(json.dumps({"wds_shapes": (cb_folder / "zeroshot_classification_templates.txt").read_text().split("\n")[:-1]}))
    assert cli.main([str(ckpts[STEPS]), "--zeroshot", str(cb_folder), "--templates", str(tpl), "--device", "cpu",
                     "--num-workers", "0", "--out", str(tmp / "json_tpl")]) == 0
    again = json.loads(next((tmp / "json_tpl").glob("*.json")).read_text())
    assert again["metrics"]["acc1"] == final["metrics"]["acc1"]

    # clip_benchmark build over clipl's files and one written by clip_benchmark itself: one row per checkpoint.
    theirs = tmp / "cb_own"
    theirs.mkdir()
    (theirs / "open_clip.json").write_text(json.dumps({
        "dataset": "wds/wds_shapes", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
        "metrics": {"acc1": 0.5, "acc5": 1.0, "mean_per_class_recall": 0.5}, "language": "en"}))
    csv_path = tmp / "table.csv"
    proc = subprocess.run([sys.executable, "-m", "clip_benchmark.cli", "build", str(out), str(theirs),
                           "--output", str(csv_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import csv

    table = list(csv.DictReader(csv_path.open()))
    names = sorted(r["model_fullname"] for r in table)
    assert len(names) == len(ckpts) + 1 == len(set(names))
    assert all(n.startswith("tiny_rn ") for n in names if "openai" not in n)
