"""TrainerConfig validation, batch arithmetic and build_trainer on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipl.trainer import (
    TrainerConfig,
    accumulation_for,
    apply_model_switches,
    build_trainer,
    parse_devices,
    resolve_batch,
    world_size,
)


def test_defaults_valid_and_omegaconf_round_trip():
    from omegaconf import OmegaConf

    base = OmegaConf.structured(TrainerConfig)
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(["devices=2", "strategy=ddp", "deepspeed.hysteresis=3"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, TrainerConfig)
    assert cfg.devices == "2" and parse_devices(cfg.devices) == 2
    assert cfg.deepspeed.hysteresis == 3


@pytest.mark.parametrize(
    "text, parsed",
    [("auto", "auto"), ("2", 2), (3, 3), ("-1", -1), ("0,1", [0, 1]), ("0, 2,", [0, 2]), ([1, 3], [1, 3])],
)
def test_parse_devices(text, parsed):
    assert parse_devices(text) == parsed


@pytest.mark.parametrize("bad", ["two", "0", "-2", "1,1", True, ""])
def test_parse_devices_rejects(bad):
    with pytest.raises(ValueError, match="trainer.devices"):
        parse_devices(bad)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(precision="fp16"), "precision"),
        (dict(strategy="fsdp2"), "strategy"),
        (dict(zero_stage=4), "zero_stage"),
        (dict(zero_stage=0), "zero_stage"),
        (dict(offload_optimizer=True), "offload_optimizer"),
        (dict(offload_params=True, strategy="ddp"), "offload_params"),
        (dict(strategy="deepspeed", zero_stage=2, offload_params=True), "zero_stage=3"),
        (dict(strategy="deepspeed", accelerator="cpu"), "DeepSpeedStrategy"),
        (dict(precision="16-mixed", accelerator="cpu"), "bf16-mixed"),
        (dict(global_batch_size=64, accumulate_grad_batches=2), "not both"),
        (dict(gradient_clip_val=0.0), "gradient_clip_val"),
        (dict(val_check_interval=2.5), "val_check_interval"),
        (dict(limit_val_batches=0.0), "limit_val_batches"),
        (dict(max_steps=0), "max_steps"),
        (dict(accelerator="tpu"), "accelerator"),
        (dict(num_nodes=0), "num_nodes"),
        (dict(devices="x"), "devices"),
    ],
)
def test_invalid_combinations_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainerConfig(**kwargs)


def test_deepspeed_without_cuda_refused_at_build(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    cfg = TrainerConfig(strategy="deepspeed")
    with pytest.raises(ValueError, match="needs CUDA"):
        build_trainer(cfg, micro_batch_size=4, out_dir=str(tmp_path), callbacks=[], loggers=False)


@pytest.mark.parametrize(
    "global_batch, per_device_max, ws, expected",
    [
        (32768, 256, 128, (256, 1)),
        (32768, 128, 128, (128, 2)),
        (1024, 512, 1, (512, 2)),
        (768, 512, 1, (384, 2)),
        (1000, 400, 1, (250, 4)),
        (48, 64, 2, (24, 1)),
        (4096, 100, 8, (64, 8)),
    ],
)
def test_resolve_batch(global_batch, per_device_max, ws, expected):
    per_device, accumulate = resolve_batch(global_batch, per_device_max, ws)
    assert (per_device, accumulate) == expected
    assert per_device * accumulate * ws == global_batch
    assert per_device <= per_device_max


def test_resolve_batch_errors():
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        resolve_batch(1024, 256, 3)
    # 257 is prime: only 1 x 257 would fit under 256, which we refuse.
    with pytest.raises(ValueError, match="multiple of 256"):
        resolve_batch(257, 256, 1)


def test_accumulation_for_and_world_size():
    cfg = TrainerConfig(accelerator="cpu", devices="1", num_nodes=1, global_batch_size=64)
    assert world_size(cfg) == 1
    assert accumulation_for(cfg, 16) == 4
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size"):
        accumulation_for(cfg, 24)
    assert accumulation_for(TrainerConfig(accumulate_grad_batches=3), 16) == 3
    assert world_size(TrainerConfig(accelerator="cpu", devices="0,1,2", num_nodes=2)) == 6


class _Toy:
    """A tiny regression LightningModule recording the gradient norms it sees before each step."""

    @staticmethod
    def make(lr=0.1):
        import lightning as L

        class Toy(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = nn.Linear(4, 1)
                self.grad_norms = []

            def training_step(self, batch, batch_idx):
                x, y = batch
                return nn.functional.mse_loss(self.net(x), y) * 100.0  # large grads, so clipping bites

            def on_before_optimizer_step(self, optimizer):
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters()]))
                self.grad_norms.append(float(norm))

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=lr)

        return Toy()


def _loader(n=32, batch=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 1.0
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _fit(tmp_path, **kwargs):
    cfg = TrainerConfig(accelerator="cpu", devices="1", enable_progress_bar=False, enable_model_summary=False,
                        **kwargs)
    trainer = build_trainer(cfg, micro_batch_size=8, out_dir=str(tmp_path), callbacks=[], loggers=False)
    model = _Toy.make()
    trainer.fit(model, _loader())
    return trainer, model


def test_fit_clipping_and_global_batch(tmp_path):
    # 32 samples per epoch, global batch 16 = 8 x 2 accumulation -> 2 optimizer steps per epoch.
    trainer, model = _fit(tmp_path, max_epochs=2, global_batch_size=16, gradient_clip_val=0.5)
    assert trainer.accumulate_grad_batches == 2
    assert trainer.global_step == 4
    assert trainer.gradient_clip_val == 0.5 and trainer.default_root_dir == str(tmp_path)
    # Lightning clips after on_before_optimizer_step: the step's effect must equal a clipped update.
    assert len(model.grad_norms) == 4 and min(model.grad_norms) > 0.5


def test_fit_clipped_update_matches_manual(tmp_path):
    torch.manual_seed(0)
    trainer, model = _fit(tmp_path, max_steps=1, gradient_clip_val=0.5)
    torch.manual_seed(0)
    ref = _Toy.make()
    x, y = next(iter(_loader()))
    loss = nn.functional.mse_loss(ref.net(x), y) * 100.0
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_checkpointing_only_from_given_callbacks(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = TrainerConfig(accelerator="cpu", devices="1")
    bare = build_trainer(cfg, micro_batch_size=4, out_dir=str(tmp_path), callbacks=[], loggers=False)
    assert bare.checkpoint_callback is None
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"))
    given = build_trainer(cfg, micro_batch_size=4, out_dir=str(tmp_path), callbacks=[ckpt], loggers=False)
    assert given.checkpoint_callbacks == [ckpt]


def test_ddp_strategy_settings(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    cfg = TrainerConfig(accelerator="cpu", devices="1", strategy="ddp", ddp_bucket_cap_mb=50, dist_timeout_s=60)
    trainer = build_trainer(cfg, micro_batch_size=4, out_dir=str(tmp_path), callbacks=[], loggers=False)
    strategy = trainer.strategy
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {
        "find_unused_parameters": False,
        "static_graph": False,
        "bucket_cap_mb": 50,
        "gradient_as_bucket_view": True,
    }
    assert strategy._timeout.total_seconds() == 60
    assert trainer.precision == "32-true"


def test_bf16_mixed_on_cpu(tmp_path):
    trainer, model = _fit(tmp_path, max_steps=2, precision="bf16-mixed")
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 2
    assert all(math.isfinite(n) for n in model.grad_norms)


def test_world_size_mismatch_detected(tmp_path, monkeypatch):
    import clipl.trainer as T

    monkeypatch.setattr(T, "world_size", lambda cfg: 2)
    cfg = TrainerConfig(accelerator="cpu", devices="1")
    with pytest.raises(ValueError, match="launcher started 1 process"):
        build_trainer(cfg, micro_batch_size=4, out_dir=str(tmp_path), callbacks=[], loggers=False)


def test_apply_model_switches_keeps_keys():
    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
            self.transformer = nn.Linear(4, 4)
            self.text_tower = self.transformer

    model = Fake()
    keys = list(model.state_dict())
    apply_model_switches(model, TrainerConfig(channels_last=True, compile=True))
    assert list(model.state_dict()) == keys
    assert model.visual[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.visual._compiled_call_impl is not None and model.transformer._compiled_call_impl is not None


def test_apply_model_switches_needs_towers():
    with pytest.raises(ValueError, match="text_tower"):
        apply_model_switches(nn.Linear(2, 2), TrainerConfig(compile=True))
    lin = nn.Linear(2, 2)
    assert apply_model_switches(lin, TrainerConfig()) is lin
