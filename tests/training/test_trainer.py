"""TrainerConfig validation, the batch plan's hand-off to Lightning/DeepSpeed, and build_trainer on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipl.distributed.plan import plan_for, resolve_plan
from clipl.distributed.world import world_size
from clipl.training.config import STRATEGIES, TrainerConfig, parse_devices
from clipl.training.trainer import build_trainer


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
        (dict(micro_batch_size=0), "micro_batch_size"),
        (dict(global_batch_size=0), "global_batch_size"),
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
        build_trainer(cfg, out_dir=str(tmp_path), callbacks=[], loggers=False)


def test_world_size_and_plan_for():
    assert world_size(TrainerConfig(accelerator="cpu", devices="0,1,2", num_nodes=2)) == 6
    cfg = TrainerConfig(accelerator="cpu", devices="2", num_nodes=2, micro_batch_size=16, global_batch_size=256)
    plan = plan_for(cfg)
    assert (plan.world_size, plan.micro_batch_size, plan.accumulation, plan.per_device_batch_size) == (4, 16, 4, 64)
    assert plan_for(TrainerConfig(accelerator="cpu", devices="2", micro_batch_size=16)).global_batch_size == 32
    with pytest.raises(ValueError, match=r"trainer\.global_batch_size=100 .*trainer\.micro_batch_size=16"):
        plan_for(TrainerConfig(accelerator="cpu", devices="2", micro_batch_size=16, global_batch_size=100))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_engine_sees_one_loader_batch_per_step(stage):
    # Lightning sets gradient_accumulation_steps from accumulate_grad_batches (1): the engine's micro
    # batch must then be the whole per-device batch, so its train_batch_size is the global batch.
    cfg = TrainerConfig(strategy="deepspeed", zero_stage=stage, devices="8", micro_batch_size=32,
                        global_batch_size=1024)
    plan = plan_for(cfg)
    ds = STRATEGIES["deepspeed"](cfg, plan).config
    assert "gradient_accumulation_steps" not in ds  # Lightning's to set, from accumulate_grad_batches=1
    assert ds["train_micro_batch_size_per_gpu"] == plan.per_device_batch_size == 128
    assert ds["train_micro_batch_size_per_gpu"] * plan.world_size == plan.global_batch_size


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
                        **{"micro_batch_size": 8, **kwargs})
    plan = plan_for(cfg)
    trainer = build_trainer(cfg, plan=plan, out_dir=str(tmp_path), callbacks=[], loggers=False)
    model = _Toy.make()
    trainer.fit(model, _loader(batch=plan.per_device_batch_size))
    return trainer, model


def test_fit_global_batch_without_lightning_accumulation_or_clipping(tmp_path):
    # 32 samples per epoch, global batch 16 = 8 x 2 accumulation: the loader yields 16 per step (the
    # module splits them), Lightning never accumulates -> 2 optimizer steps per epoch.
    trainer, model = _fit(tmp_path, max_epochs=2, global_batch_size=16, gradient_clip_val=0.5)
    assert trainer.accumulate_grad_batches == 1
    assert trainer.global_step == 4 and len(model.grad_norms) == 4
    # Clipping is the CLIPModule's (manual optimisation; tests/test_module.py): Lightning's is off.
    assert trainer.gradient_clip_val is None and trainer.default_root_dir == str(tmp_path)


def test_checkpointing_only_from_given_callbacks(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = TrainerConfig(accelerator="cpu", devices="1")
    bare = build_trainer(cfg, out_dir=str(tmp_path), callbacks=[], loggers=False)
    assert bare.checkpoint_callback is None
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"))
    given = build_trainer(cfg, out_dir=str(tmp_path), callbacks=[ckpt], loggers=False)
    assert given.checkpoint_callbacks == [ckpt]


def test_ddp_strategy_settings(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    cfg = TrainerConfig(accelerator="cpu", devices="1", strategy="ddp", ddp_bucket_cap_mb=50, dist_timeout_s=60)
    trainer = build_trainer(cfg, out_dir=str(tmp_path), callbacks=[], loggers=False)
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
    import clipl.training.trainer as T

    monkeypatch.setattr(T, "world_size", lambda cfg: 2)  # as if devices x num_nodes said 2
    cfg = TrainerConfig(accelerator="cpu", devices="1")
    with pytest.raises(ValueError, match="launcher started 1 process"):
        build_trainer(cfg, plan=resolve_plan(None, 4, 2), out_dir=str(tmp_path), callbacks=[], loggers=False)


def test_plan_for_another_world_refused(tmp_path):
    cfg = TrainerConfig(accelerator="cpu", devices="1")
    with pytest.raises(ValueError, match="batch plan is for 4 rank"):
        build_trainer(cfg, plan=resolve_plan(None, 4, 4), out_dir=str(tmp_path), callbacks=[], loggers=False)
