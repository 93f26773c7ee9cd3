"""Weights import/export: file formats, wrappers, shape inference, TorchScript refusal, errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import clipl
from clipl.models import ModelConfig, build_model, preset
from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.weights import (
    OPEN_CLIP_WEIGHTS,
    check_state_dict,
    export_state_dict,
    infer_model_config,
    load_model,
    load_state_dict_file,
)

OPENAI = {"rn50": "RN50", "rn101": "RN101", "rn50x4": "RN50x4", "rn50x16": "RN50x16", "rn50x64": "RN50x64",
          "vit_b32": "ViT-B-32", "vit_b16": "ViT-B-16", "vit_l14": "ViT-L-14", "vit_l14_336": "ViT-L-14-336"}
# A small ResNet with OpenAI's default head rule, so its architecture is fully inferable.
SMALL_RN = ModelConfig(
    embed_dim=64,
    image=ModifiedResNetConfig(image_size=64, layers=[1, 2, 1, 1], width=16),
    text=TextTransformerConfig(context_length=16, width=64, layers=2),
)


def _inputs(model, n=2):
    torch.manual_seed(0)
    images = torch.randn(n, 3, model.image_size, model.image_size)
    tokens = clipl.tokenize(["a photo of a cat", "two red squares"][:n], context_length=model.context_length)
    return images, tokens


def _encode(model, images, tokens):
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("name", list(OPENAI))
def test_infer_model_config_equals_preset(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        sd = build_model(name).state_dict()
    assert infer_model_config(sd) == preset(name)


@pytest.mark.parametrize("name", list(OPENAI))
def test_infer_from_open_clip_state_dict(name):
    open_clip = pytest.importorskip("open_clip")
    with torch.device("meta"):
        sd = open_clip.model.CLIP(**open_clip.get_model_config(OPENAI[name]), quick_gelu=True).state_dict()
    assert infer_model_config(sd) == preset(name)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("cfg", ["tiny_vit", SMALL_RN], ids=["vit", "rn"])
def test_export_then_load_gives_equal_outputs(tmp_path, suffix, cfg):
    model = build_model(cfg)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    path = export_state_dict(model, tmp_path / f"w{suffix}")
    loaded = load_model(path)  # architecture inferred from the shapes
    assert torch.equal(loaded.logit_scale, model.logit_scale)
    inputs = _inputs(model)
    for a, b in zip(_encode(model, *inputs), _encode(loaded, *inputs)):
        assert torch.equal(a, b)


def test_half_precision_checkpoint_loads_into_fp32(tmp_path):
    model = build_model("tiny_vit")
    path = export_state_dict({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "fp16.pt")
    loaded = load_model(path, preset="tiny_vit")  # a bare dict: the architecture must be named
    assert next(loaded.parameters()).dtype == torch.float32
    inputs = _inputs(model)
    for a, b in zip(_encode(model.half().float(), *inputs), _encode(loaded, *inputs)):
        assert torch.equal(a, b)


def test_adapter_towers_round_trip_with_a_config(tmp_path):
    pytest.importorskip("transformers")
    from clipl.models.backbones.hf_text import HFTextConfig
    from clipl.models.backbones.vit import ViTConfig

    cfg = ModelConfig(embed_dim=32, image=ViTConfig(image_size=32, patch_size=16, width=64, layers=1),
                      text=HFTextConfig(hidden_size=64, num_layers=1, num_heads=1, context_length=16))
    model = build_model(cfg)
    path = export_state_dict(model, tmp_path / "hf.safetensors")
    loaded = load_model(path)  # the architecture travels in the safetensors header
    bare = export_state_dict(model.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="Pass preset="):
        load_model(bare)
    assert torch.equal(load_model(bare, preset=cfg).logit_scale, model.logit_scale)
    inputs = _inputs(model)
    for a, b in zip(_encode(model, *inputs), _encode(loaded, *inputs)):
        assert torch.equal(a, b)


def test_export_refuses_overwrite_and_bad_suffix(tmp_path):
    model = build_model("tiny_vit")
    path = export_state_dict(model, tmp_path / "w.safetensors")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_state_dict(model, path)
    export_state_dict(model, path, overwrite=True)
    with pytest.raises(ValueError, match="unknown weights suffix"):
        export_state_dict(model, tmp_path / "w.npz")


def test_wrappers_and_prefixes(tmp_path):
    sd = build_model("tiny_vit").state_dict()
    lightning = {"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "objective.ema": torch.zeros(1)},
                 "epoch": 3, "global_step": 100, "hyper_parameters": {"lr": 1e-3}}
    cases = {
        "lightning.ckpt": lightning,
        "wrapped.pt": {"state_dict": sd},
        "ddp.pt": {f"module.{k}": v for k, v in sd.items()},
        "compiled_ddp.pt": {f"module._orig_mod.{k}": v for k, v in sd.items()},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        got = load_state_dict_file(tmp_path / name)
        assert got.keys() == sd.keys(), name
        assert all(torch.equal(got[k], sd[k]) for k in sd), name


def test_open_clip_folder_loads_with_equal_outputs(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"layers": 2, "width": 64, "patch_size": 16, "image_size": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}
    torch.manual_seed(1)
    ref = open_clip.model.CLIP(**cfg).eval()
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / OPEN_CLIP_WEIGHTS))
    model = load_model(tmp_path)
    images, tokens = _inputs(model)
    ours = _encode(model, images, tokens)
    with torch.no_grad():
        theirs = ref.encode_image(images), ref.encode_text(tokens)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match=OPEN_CLIP_WEIGHTS):
        load_state_dict_file(tmp_path / "empty_dir")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_refused_with_reason(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    with pytest.raises(ValueError, match="TorchScript.*runs the Python code.*trust_torchscript=True"):
        load_state_dict_file(path)
    with pytest.raises(ValueError, match="TorchScript"):
        load_model(path)
    sd = load_state_dict_file(path, trust_torchscript=True)
    assert set(sd) == {"weight", "bias"} and sd["weight"].shape == (2, 3)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_traced_clip_model_loads_when_trusted(tmp_path):
    model = build_model("tiny_vit").eval()
    path = tmp_path / "traced.pt"
    images, tokens = _inputs(model)
    # Like OpenAI's released archives: a traced CLIP model whose state dict is OpenAI's layout.
    traced = torch.jit.trace_module(model, {"encode_image": images, "encode_text": tokens}, check_trace=False)
    torch.jit.save(traced, str(path))
    loaded = load_model(path, preset="tiny_vit", trust_torchscript=True)
    for a, b in zip(_encode(model, images, tokens), _encode(loaded, images, tokens)):
        assert torch.equal(a, b)


def test_mismatch_names_first_key_and_shapes(tmp_path):
    recorded = export_state_dict(build_model("tiny_vit", embed_dim=64), tmp_path / "rec.safetensors")
    with pytest.raises(ValueError, match=r"recorded architecture differs.*embed_dim: 64 != 128"):
        load_model(recorded, preset="tiny_vit")
    path = export_state_dict(build_model("tiny_vit", embed_dim=64).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"'text_projection': checkpoint \(128, 64\) vs model \(128, 128\)"):
        load_model(path, preset="tiny_vit")
    # A ViT checkpoint for a ResNet model: the stems' first convolutions already disagree.
    with pytest.raises(ValueError, match=r"'visual\.conv1\.weight': checkpoint \(128, 3, 8, 8\) vs model \(8, 3, 3, 3\)"):
        load_model(export_state_dict(build_model("tiny_vit").state_dict(), tmp_path / "vit.pt"), preset="tiny_rn")
    sd = load_state_dict_file(path)
    sd.pop("logit_scale")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: 'logit_scale'; unexpected keys: 'extra\.weight'"):
        check_state_dict(build_model("tiny_vit", embed_dim=64), sd)


def test_bad_files_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pt")
    torch.save({"weights": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module, not tensors
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(tmp_path / "pickled.pt")
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_state_dict_file(tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="cannot infer the image tower"):
        infer_model_config({"foo.weight": torch.zeros(1)})


def test_clipl_checkpoint_rebuilds_the_runs_exact_model(tmp_path):
    """A run's .ckpt: heads (tiny_rn: 4, not the width rule's 8) and a SigLIP objective's logit bias
    come from the stored run config, with no preset."""
    from clipl.config.io import to_container
    from clipl.config.schema import RunConfig
    from clipl.module import CLIPModule
    from clipl.objectives.sigmoid import SigLipLossConfig

    model = dataclasses.replace(preset("tiny_rn"), init_logit_scale=math.log(10), init_logit_bias=-10.0)
    cfg = RunConfig(model=model, objective=SigLipLossConfig())
    system = CLIPModule(cfg)
    system.configure_model()
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": {"config": to_container(cfg)},
                "global_step": 3}, path)
    loaded = load_model(path)
    assert loaded.visual.attnpool.heads == 4 and loaded.logit_bias is not None
    assert torch.equal(loaded.logit_bias, system.model.logit_bias)
    inputs = _inputs(loaded)
    for a, b in zip(_encode(system.model, *inputs), _encode(loaded, *inputs)):
        assert torch.equal(a, b)
