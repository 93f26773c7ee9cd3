"""ZeRO-1/2/3 checkpoints from a real DeepSpeed engine (CPU, gloo) -> fp32 .ckpt -> OpenAI layout -> reload."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from clipl.cli.convert import main  # noqa: E402
from clipl.distributed.convert import convert_zero_checkpoint  # noqa: E402
from clipl.models.export import export_openai, openai_state_dict  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import zero_worker  # noqa: E402

STAGES = ["1", "2", "3", "3i"]


def _run_worker(out: Path, precision: str, model: str, stages: list[str]) -> Path:
    zero_worker.run_script("zero_worker.py", str(out), precision, model, *stages)
    return out


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    return _run_worker(tmp_path_factory.mktemp("zero_fp32"), "32-true", "micro", STAGES)


def _fresh_model(name="micro"):
    torch.manual_seed(123)  # different weights from the run: loading must overwrite all of them
    return zero_worker.build(name).eval()


@pytest.mark.parametrize("stage", STAGES)
def test_convert_equals_engine_weights(fp32_run, stage, tmp_path):
    out = convert_zero_checkpoint(fp32_run / f"zero{stage}", tmp_path / "model.ckpt")
    ckpt = torch.load(out, map_location="cpu", weights_only=True)  # plain containers only
    ref = torch.load(fp32_run / f"ref{stage}.pt", weights_only=True)
    sd = ckpt["state_dict"]
    fresh = zero_worker.system("micro")
    fresh.configure_model()
    expected_keys = set(fresh.state_dict())
    assert set(sd) == expected_keys
    for name, want in ref["weights"].items():
        got = sd[name]
        assert got.dtype == (torch.float32 if want.is_floating_point() and got.is_floating_point() else got.dtype)
        torch.testing.assert_close(got.float(), want, rtol=0, atol=0, msg=f"{name} differs from the engine")
    assert ckpt["hyper_parameters"] == dict(fresh.hparams)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 3 and ckpt["clipl"]["samples_seen"] == 12
    assert "loops" not in ckpt and "module" not in ckpt and "optimizer" not in ckpt
    assert ckpt["clipl_conversion"]["zero_stage"] == int(stage[0])
    assert ckpt["clipl_conversion"]["tag"] == "checkpoint"


def test_load_from_checkpoint_restores_the_module(fp32_run, tmp_path):
    from clipl.module import CLIPModule

    ckpt = convert_zero_checkpoint(fp32_run / "zero3", tmp_path / "model.ckpt")
    restored = CLIPModule.load_from_checkpoint(ckpt, map_location="cpu")
    ref = torch.load(fp32_run / "ref3.pt", weights_only=True)
    state = restored.state_dict()
    for name, want in ref["weights"].items():
        torch.testing.assert_close(state[name].float(), want, rtol=0, atol=0, msg=name)
    assert restored.samples_seen == 12


@pytest.mark.parametrize("stage", STAGES)
def test_openai_export_reloads_with_same_outputs(fp32_run, stage, tmp_path):
    ckpt = convert_zero_checkpoint(fp32_run / f"zero{stage}", tmp_path / "model.ckpt")
    path = export_openai(ckpt, tmp_path / "openai.pt")
    sd = torch.load(path, weights_only=True)
    assert "logit_scale" in sd and sd["logit_scale"].dim() == 0 and not any(k.startswith("model.") for k in sd)
    model = _fresh_model()
    model.load_state_dict(sd, strict=True)
    ref = torch.load(fp32_run / f"ref{stage}.pt", weights_only=True)
    with torch.no_grad():
        out = model(ref["images"], ref["tokens"])
    torch.testing.assert_close(out.image_features, ref["image_features"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.text_features, ref["text_features"], rtol=1e-5, atol=1e-5)


def test_stages_train_identically(fp32_run):
    # Same weights, data and fp32 arithmetic: ZeRO stages differ in where states live, not in the maths.
    losses = [torch.load(fp32_run / f"ref{s}.pt", weights_only=True)["losses"] for s in ("1", "2", "3")]
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], rel=1e-5)
    assert losses[0][2] != losses[0][0]  # it did train


def test_zero3_init_construction_keeps_initialisation(fp32_run):
    ref = torch.load(fp32_run / "ref3i.pt", weights_only=True)
    assert ref["init_max_abs_diff"] == 0.0


def test_export_reads_a_zero_folder(fp32_run, tmp_path):
    """`clipl export` consolidates a ZeRO folder on the fly; the export records the architecture."""
    from clipl.models.export import export
    from clipl.models.weights import load_model

    out = export(fp32_run / "zero2", tmp_path / "w.safetensors", "openai")
    model = load_model(out).eval()  # no preset: the run config travelled into the header
    ref = torch.load(fp32_run / "ref2.pt", weights_only=True)
    with torch.no_grad():
        got = model(ref["images"], ref["tokens"])
    torch.testing.assert_close(got.image_features, ref["image_features"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.text_features, ref["text_features"], rtol=1e-5, atol=1e-5)


def test_cli_round_trip_and_no_overwrite(fp32_run, tmp_path, capsys):
    zero = str(fp32_run / "zero2")
    out, openai = tmp_path / "m.ckpt", tmp_path / "m.safetensors"
    assert main([zero, str(out), "--openai", str(openai)]) == 0
    from safetensors.torch import load_file

    exported = load_file(str(openai))
    for key, value in openai_state_dict(out).items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)
    # Existing outputs are never replaced silently.
    with pytest.raises(SystemExit):
        main([zero, str(tmp_path / "other.ckpt"), "--openai", str(openai)])
    assert main([zero, str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    before = out.stat().st_mtime_ns
    assert main([zero, str(out), "--openai", str(openai), "--overwrite", "--half"]) == 0
    assert out.stat().st_mtime_ns != before
    assert load_file(str(openai))["visual.conv1.weight"].dtype == torch.float16


def test_bad_inputs_name_the_path(fp32_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_zero_checkpoint(tmp_path / "missing", tmp_path / "o.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="latest"):
        convert_zero_checkpoint(tmp_path / "empty", tmp_path / "o.ckpt")
    regular = tmp_path / "regular.ckpt"
    torch.save({"state_dict": {}}, regular)
    with pytest.raises(FileNotFoundError, match="needs no conversion.*clipl export"):
        convert_zero_checkpoint(regular, tmp_path / "o.ckpt")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        convert_zero_checkpoint(fp32_run / "zero2", tmp_path / "o.ckpt", tag="global_step99")
    ckpt = convert_zero_checkpoint(fp32_run / "zero2", tmp_path / "o.ckpt")
    with pytest.raises(KeyError, match="no CLIP model under prefix 'net.'"):
        export_openai(ckpt, tmp_path / "x.pt", prefix="net.")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["2", "3"])
def test_bf16_conversion_is_the_fp32_master(tmp_path_factory, stage, tmp_path):
    run = _run_worker(tmp_path_factory.mktemp(f"zero_bf16_{stage}"), "bf16-mixed", "micro_vit", [stage])
    ckpt = torch.load(convert_zero_checkpoint(run / f"zero{stage}", tmp_path / "m.ckpt"), weights_only=True)
    ref = torch.load(run / f"ref{stage}.pt", weights_only=True)
    for name, want in ref["weights"].items():  # engine's fp32 master weights, bit for bit
        assert ckpt["state_dict"][name].dtype == torch.float32
        torch.testing.assert_close(ckpt["state_dict"][name], want, rtol=0, atol=0, msg=name)
    model = _fresh_model("micro_vit")
    model.load_state_dict(openai_state_dict(ckpt), strict=True)
    with torch.no_grad():
        out = model(ref["images"], ref["tokens"])
    # The engine ran in bf16 (8 mantissa bits); the reload runs in fp32 from the master weights.
    torch.testing.assert_close(out.image_features, ref["image_features"], rtol=0, atol=3e-2)
    torch.testing.assert_close(out.text_features, ref["text_features"], rtol=0, atol=3e-2)
