"""The DeepSpeed config dict, checked as data for every stage x offload x precision x clipping."""

from __future__ import annotations

import itertools

import pytest
import torch

from clipl.distributed.deepspeed import deepspeed_config, lightning_deepspeed_config, optimizer_class_for
from clipl.training.config import PRECISIONS, TrainerConfig

_COMBOS = [
    (stage, off_opt, off_par, precision, clip)
    for stage, off_opt, off_par, precision, clip in itertools.product(
        (1, 2, 3), (False, True), (False, True), PRECISIONS, (None, 1.0)
    )
    if not (off_par and stage != 3)
]


@pytest.mark.parametrize("stage, off_opt, off_par, precision, clip", _COMBOS)
def test_config_every_combination(stage, off_opt, off_par, precision, clip):
    cfg = TrainerConfig(strategy="deepspeed", zero_stage=stage, offload_optimizer=off_opt, offload_params=off_par,
                        precision=precision, gradient_clip_val=clip)
    ds = deepspeed_config(cfg, micro_batch_size=32, accumulate=4)
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 32 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == (clip or 0.0)
    assert ds["zero_allow_untested_optimizer"] is True
    assert ("offload_optimizer" in zero) == off_opt
    if off_opt:
        assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ("offload_param" in zero) == off_par
    if off_par:
        assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is False
        assert "allgather_bucket_size" not in zero
    else:
        assert zero["allgather_bucket_size"] == 200_000_000 and "stage3_prefetch_bucket_size" not in zero
    assert ("bf16" in ds) == precision.startswith("bf16")
    assert ("fp16" in ds) == (precision == "16-mixed")
    if precision == "16-mixed":
        assert ds["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                              "hysteresis": 2, "min_loss_scale": 1.0}
    if precision.startswith("bf16"):
        assert ds["bf16"] == {"enabled": True}
    # Lightning's variant leaves accumulation to Trainer(accumulate_grad_batches): it raises otherwise.
    lds = lightning_deepspeed_config(cfg, 32, 4)
    assert "gradient_accumulation_steps" not in lds
    assert {k: v for k, v in ds.items() if k != "gradient_accumulation_steps"} == lds
    # DeepSpeed itself must accept the dict (pydantic validation of every key and value).
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    DeepSpeedZeroConfig(**zero)


def test_deepspeed_parses_full_config():
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = TrainerConfig(strategy="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True,
                        precision="16-mixed", gradient_clip_val=1.0)
    parsed = DeepSpeedConfig(deepspeed_config(cfg, 16, 2))  # no process group: world size 1
    assert parsed.train_micro_batch_size_per_gpu == 16 and parsed.gradient_accumulation_steps == 2
    assert parsed.train_batch_size == 32
    assert parsed.zero_optimization_stage == 3 and parsed.gradient_clipping == 1.0
    fp16 = parsed.float16_config
    assert fp16.enabled and fp16.loss_scale == 0 and fp16.initial_scale_power == 16 and fp16.hysteresis == 2
    assert not parsed.bfloat16_config.enabled
    assert parsed.zero_config.offload_optimizer.device == "cpu" and parsed.zero_config.offload_param.pin_memory


def test_advanced_options_flow_through():
    cfg = TrainerConfig(strategy="deepspeed", zero_stage=3, precision="16-mixed")
    cfg.deepspeed.stage3_prefetch_bucket_size = 123
    cfg.deepspeed.initial_scale_power = 12
    ds = deepspeed_config(cfg, 8, 1)
    assert ds["zero_optimization"]["stage3_prefetch_bucket_size"] == 123
    assert ds["fp16"]["initial_scale_power"] == 12


@pytest.mark.parametrize("micro, acc, match", [(0, 1, "micro_batch_size"), (4, 0, "accumulate")])
def test_bad_sizes(micro, acc, match):
    with pytest.raises(ValueError, match=match):
        deepspeed_config(TrainerConfig(strategy="deepspeed"), micro, acc)


def test_optimizer_class_for():
    assert optimizer_class_for(TrainerConfig()) is torch.optim.AdamW
    assert optimizer_class_for(TrainerConfig(strategy="deepspeed")) is torch.optim.AdamW
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    assert optimizer_class_for(TrainerConfig(strategy="deepspeed", offload_optimizer=True)) is DeepSpeedCPUAdam
