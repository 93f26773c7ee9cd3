"""torch.compile of the towers end to end on CPU: train, resume from a checkpoint, export (keys unchanged),
with activation checkpointing and patch dropout on."""

import csv

import pytest
import torch

from clipl.models import build_model, preset
from clipl.models.weights import export_state_dict, load_checkpoint
from clipl.run import run
from clipl.training.checkpointing import find_resume_checkpoint

OVERRIDES = [
    "model=tiny_vit", "model.image.patch_dropout=0.5", "model.grad_checkpointing=true", "trainer.compile=true",
    "trainer.channels_last=false", "data.shapes.train_size=256", "data.shapes.val_size=32",
    "data.shapes.eval_size=32", "data.shapes.samples_per_shard=64", "trainer.micro_batch_size=16", "data.num_workers=0",
    "eval.zeroshot=[]", "eval.linear_probe=[]", "eval.retrieval=[]", "logging.backend=csv",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "optim.warmup_steps=1", "checkpoint.every_n_steps=2", "checkpoint.keep_last=-1",
]


def losses(out_dir) -> dict[int, float]:
    with (out_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_compiled_model_keeps_its_state_dict_keys(tmp_path):
    cfg = preset("tiny_vit")
    keys = list(build_model(cfg).state_dict())
    compiled = build_model(cfg).apply_switches(compile=True)
    assert compiled.visual._compiled_call_impl is not None and compiled.text_tower._compiled_call_impl is not None
    assert list(compiled.state_dict()) == keys
    from safetensors.torch import load_file

    assert list(load_file(export_state_dict(compiled, tmp_path / "w.safetensors"))) == sorted(keys)


@pytest.mark.slow
def test_compiled_training_resumes_exactly_and_exports(tmp_path):
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run("quickstart", [*OVERRIDES, "trainer.max_steps=4", f"out_dir={full}"]) == 0
    assert counters["stats"]["unique_graphs"] > graphs  # the towers really ran compiled
    # Resume the mid-run step-2 checkpoint (as after a crash) in another folder: steps 2 and 3 again.
    step2 = full / "checkpoints" / "step=000000002.ckpt"
    assert run("quickstart", [*OVERRIDES, "trainer.max_steps=4", f"out_dir={resumed}",
                              f"checkpoint.resume={step2}"]) == 0
    want, got = losses(full), losses(resumed)
    assert sorted(want) == [0, 1, 2, 3] and all(torch.isfinite(torch.tensor(v)) for v in want.values())
    assert sorted(got) == [2, 3]
    for step in (2, 3):  # the same patch-dropout draws (RNG restored) and the same compiled kernels
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7)

    # The checkpoint written by the compiled module has the plain module's keys: it loads and exports.
    ckpt = find_resume_checkpoint(resumed)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    plain = {f"model.{k}" for k in build_model(preset("tiny_vit")).state_dict()}
    assert set(state) == plain
    model, _ = load_checkpoint(ckpt)
    exported = export_state_dict(model, tmp_path / "export.pt")
    assert set(torch.load(exported, weights_only=True)) == {k[len("model."):] for k in plain}
