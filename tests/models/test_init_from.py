"""model.init_from: training starts from any loadable source, strictly unless told otherwise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clipl.config.schema import RunConfig
from clipl.models import build_model, preset
from clipl.models.export import export
from clipl.models.init_from import init_from
from clipl.models.weights import export_state_dict
from clipl.module import CLIPModule


def _module(model_cfg, **fields):
    system = CLIPModule(RunConfig(model=dataclasses.replace(model_cfg, **fields)))
    system.configure_model()
    return system


def _equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("fmt", ["recorded", "open_clip", "ckpt"])
def test_configure_model_starts_from_the_weights(tmp_path, fmt, caplog):
    torch.manual_seed(5)
    source = build_model("tiny_vit")
    path = export_state_dict(source, tmp_path / "w.safetensors")
    if fmt == "open_clip":
        path = export(path, tmp_path / "oc", "open_clip")
    elif fmt == "ckpt":  # a clipl training checkpoint: its run config says what it is
        ckpt = tmp_path / "run.ckpt"
        from clipl.config.io import to_container

        torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                    "hyper_parameters": {"config": to_container(RunConfig(model=preset("tiny_vit")))},
                    "global_step": 7}, ckpt)
        path = ckpt
    torch.manual_seed(6)
    system = _module(preset("tiny_vit"), init_from=str(path))
    assert _equal(system.model, source)
    assert not _equal(_module(preset("tiny_vit")).model, source)  # without init_from: a fresh model


def test_strict_refuses_another_architecture_and_non_strict_loads_what_fits(tmp_path):
    gelu = preset("tiny_vit")
    gelu = dataclasses.replace(gelu, image=dataclasses.replace(gelu.image, act="gelu"),
                               text=dataclasses.replace(gelu.text, act="gelu"))
    path = export_state_dict(build_model(gelu), tmp_path / "gelu.safetensors")
    with pytest.raises(ValueError, match=r"architecture differs.*image\.act: 'gelu' != 'quick_gelu'.*init_from_strict=false"):
        _module(preset("tiny_vit"), init_from=str(path))
    # A source with a one-layer text tower: strict refuses; non-strict loads the image tower and reports.
    small_text = preset("tiny_vit")
    small_text = dataclasses.replace(small_text, text=dataclasses.replace(small_text.text, layers=1))
    torch.manual_seed(1)
    src_model = build_model(small_text)
    bare = export_state_dict(src_model.state_dict(), tmp_path / "bare.pt")
    target = build_model("tiny_vit")
    with pytest.raises(ValueError, match=r"does not fit the model strictly.*missing"):
        init_from(target, str(bare))
    report = init_from(target, str(bare), strict=False)
    assert not report.architecture_checked and "not verified" in report.summary()
    assert all(k.startswith("transformer.resblocks.1.") for k in report.missing) and report.missing
    sd = target.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in src_model.state_dict().items() if k in report.loaded)
    assert any(k.startswith("visual.") for k in report.loaded)
