"""`clipl eval` on a clipl checkpoint and on a plain state dict."""

import json

import pytest
import torch

from clipl.cli import eval as cli
from clipl.config.io import to_container
from clipl.config.schema import RunConfig
from clipl.data.config import DataConfig, ShapesConfig
from clipl.eval.config import EvalConfig
from clipl.eval.runner import eval_mode, model_encoders, run_linear_probe, run_zero_shot
from clipl.eval.specs import resolve, resolve_probe

torch.set_num_threads(1)


def _tiny_cfg():
    from clipl.models import preset

    return preset("tiny_vit")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from clipl.models.clip import CLIPModel

    tmp = tmp_path_factory.mktemp("cli")
    shapes = ShapesConfig(train_size=16, val_size=16, eval_size=24, samples_per_shard=12,
                          cache_dir=str(tmp / "shapes"), num_procs=1)
    ev = EvalConfig(zeroshot=["shapes:shape"], linear_probe=["shapes:colour"], batch_size=8, num_workers=0,
                    linear_probe_max_iter=20, linear_probe_weight_decays=[1e-3, 1e-1])
    cfg = RunConfig(model=_tiny_cfg(), data=DataConfig(shapes=shapes), eval=ev)
    torch.manual_seed(0)
    model = CLIPModel.from_config(cfg.model)
    ckpt = tmp / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_container(cfg)}, "global_step": 12}, ckpt)
    return tmp, cfg, model, ckpt


def test_cli_reproduces_direct_evaluation(setup, capsys):
    tmp, cfg, model, ckpt = setup
    assert cli.main([str(ckpt), "--out", str(tmp / "out"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "shapes_shape" in printed and "acc1=" in printed
    files = sorted(p.name for p in (tmp / "out").glob("*.json"))
    assert files == ["linear_probe_shapes_colour_step00000012.json", "zeroshot_classification_shapes_shape_step00000012.json"]
    enc = model_encoders(model, "cpu")
    with eval_mode(model):
        zs = run_zero_shot(enc, resolve("shapes:shape", "zeroshot", cfg.data.shapes)[0], cfg.eval).metrics
        lp = run_linear_probe(enc, resolve_probe("shapes:colour", cfg.data.shapes)[0], cfg.eval)
    rec = json.loads((tmp / "out" / files[1]).read_text())
    assert rec["metrics"] == zs and rec["pretrained"] == f"{ckpt}@step12" and rec["step"] == 12
    assert rec["model"] == "tiny_vit"  # the architecture, not the file
    lp_rec = json.loads((tmp / "out" / files[0]).read_text())["metrics"]
    assert lp_rec["lp_acc1"] == lp.metrics["acc1"] and lp_rec["weight_decay"] == lp.weight_decay


def test_cli_overrides_and_state_dict(setup, capsys, tmp_path):
    tmp, cfg, model, ckpt = setup
    from clipl.models.weights import export_state_dict

    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    sd = export_state_dict(model, tmp_path / "weights.pt")  # records the architecture beside it
    # A state dict has no run config: point at the same shapes set through its directory.
    from clipl.data.shapes import ensure_shapes

    shape_split = str(ensure_shapes(cfg.data.shapes).root / "shape")
    # A bare state dict: shapes cannot tell the activation or heads, and nothing is guessed.
    with pytest.raises(ValueError, match="bare state dict.*preset='tiny_vit'"):
        cli.main([str(bare), "--zeroshot", f"shapes_shape={shape_split}", "--device", "cpu"])
    # No --model: the architecture comes from clipl's export metadata.
    assert cli.main([str(sd), "--zeroshot", f"shapes_shape={shape_split}", "--templates",
                     "shapes", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    rec = json.loads(next((tmp_path / "o").glob("*.json")).read_text())
    enc = model_encoders(model, "cpu")
    with eval_mode(model):
        zs = run_zero_shot(enc, resolve("shapes:shape", "zeroshot", cfg.data.shapes)[0], cfg.eval).metrics
    assert rec["metrics"] == zs and "step" not in rec


def test_cli_errors(tmp_path, setup):
    _, _, _, ckpt = setup
    from clipl.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint=.*nope.ckpt: no such file"):  # `clipl` exits 2 with it
        cli.main([str(tmp_path / "nope.ckpt")])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        cli.main([str(_no_eval_ckpt(tmp_path))])


def _no_eval_ckpt(tmp_path):
    from clipl.models.clip import CLIPModel

    cfg = RunConfig(model=_tiny_cfg())
    model = CLIPModel.from_config(cfg.model)
    path = tmp_path / "noeval.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_container(cfg)}}, path)
    return path
