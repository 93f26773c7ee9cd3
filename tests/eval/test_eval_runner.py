"""Runner: pre-projection probe features, and the full pipeline under 2 gloo processes."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipl.data.config import ShapesConfig
from clipl.data.transforms import normalize
from clipl.eval.config import EvalConfig
from clipl.eval.runner import eval_mode, model_encoders, run_linear_probe, run_retrieval, run_zero_shot
from clipl.eval.specs import resolve, resolve_probe

torch.set_num_threads(1)


def _model(name):
    from clipl.models import build_model

    torch.manual_seed(0)
    return build_model(name)


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_rn"])
def test_features_before_projection(name):
    model = _model(name).eval()
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    after = model_encoders(model, "cpu", "after").probe(images)
    before = model_encoders(model, "cpu", "before").probe(images)
    with torch.no_grad():
        assert torch.allclose(after, model.encode_image(normalize(images), normalize=True), atol=1e-6)
        if name == "tiny_vit":
            assert before.shape == (3, model.visual.ln_post.weight.shape[0])
            projected = before @ model.visual.proj
        else:
            assert before.shape == (3, model.visual.attnpool.c_proj.in_features)
            projected = model.visual.attnpool.c_proj(before)
    torch.testing.assert_close(F.normalize(projected, dim=-1), after, atol=1e-5, rtol=1e-5)


def test_features_before_projection_timm_and_hf_towers():
    """linear_probe_position='before' reaches adapter towers through the Tower contract (no class checks)."""
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    from clipl.models import ModelConfig, build_model
    from clipl.models.backbones.hf_text import HFTextConfig
    from clipl.models.backbones.timm_image import TimmImageConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(
        embed_dim=16, image=TimmImageConfig(model_name="test_resnet", image_size=64),
        text=HFTextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, context_length=16))).eval()
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    before = model_encoders(model, "cpu", "before").probe(images)
    after = model_encoders(model, "cpu", "after").probe(images)
    with torch.no_grad():
        pooled = model.visual.trunk(normalize(images))
        assert before.shape == (3, model.visual.trunk.num_features)
        torch.testing.assert_close(before, pooled)
        torch.testing.assert_close(F.normalize(model.visual.head(before), dim=-1), after, atol=1e-5, rtol=1e-5)


def test_before_projection_unsupported_tower_errors():
    model = _model("tiny_vit")
    model.visual = torch.nn.Module()
    with pytest.raises(ValueError, match="use linear_probe_position='after'"):
        model_encoders(model, "cpu", "before")
    with pytest.raises(ValueError, match="'after' or 'before'"):
        model_encoders(model, "cpu", "middle")


def _evaluate(shapes_dir: str) -> dict:
    shapes = ShapesConfig(train_size=8, val_size=21, eval_size=23, samples_per_shard=8, cache_dir=shapes_dir, num_procs=1)
    cfg = EvalConfig(batch_size=4, num_workers=0, linear_probe_max_iter=15, linear_probe_weight_decays=[1e-3, 1e-1],
                     max_captions=3)
    model = _model("tiny_vit")
    enc = model_encoders(model, "cpu")
    with eval_mode(model):
        zs = run_zero_shot(enc, resolve("shapes:colour", "zeroshot", shapes)[0], cfg)
        ret = run_retrieval(enc, resolve("shapes", "retrieval", shapes)[0], cfg)
        lp = run_linear_probe(enc, resolve_probe("shapes:shape", shapes)[0], cfg)
    return {"zs": zs.metrics, "per_class": zs.per_class_recall, "ret": ret.metrics, "lp": lp.metrics, "wd": lp.weight_decay}


def _worker(rank, world, port, shapes_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = _evaluate(shapes_dir)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)


@pytest.mark.slow
def test_pipeline_one_vs_two_processes(tmp_path):
    shapes_dir = str(tmp_path / "shapes")
    single = json.loads(json.dumps(_evaluate(shapes_dir), allow_nan=True))  # generates the set once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, shapes_dir, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        multi = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert multi["zs"] == single["zs"] and multi["ret"] == single["ret"] and multi["wd"] == single["wd"]
        assert str(multi["per_class"]) == str(single["per_class"])  # NaN-safe comparison
        for k, v in single["lp"].items():
            assert abs(multi["lp"][k] - v) < 1e-6
