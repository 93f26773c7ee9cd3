"""Lightning + DeepSpeed ZeRO-2/3 in bf16 with CLIPModule on one GPU: fit, save, convert, reload, compare.

GPU only (Lightning's DeepSpeedStrategy refuses CPUs):  pytest -m gpu tests/gpu/test_deepspeed_gpu.py
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

pytestmark = pytest.mark.gpu

STEPS = 4
BATCH = 8


class Synthetic(torch.utils.data.Dataset):
    """Deterministic uint8 images and EOT-terminated tokens, batched as the data pipeline does."""

    def __init__(self, n: int, image_size: int, context_length: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g)
        self.text = torch.randint(1, 49000, (n, context_length), generator=g)
        self.text[:, 12] = 49407
        self.text[:, 13:] = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text": self.text[i], "key": str(i)}


def _config(stage: int, out_dir: str):
    from clipl.config.schema import RunConfig
    from clipl.models import preset
    from clipl.optim import OptimConfig
    from clipl.training.config import TrainerConfig

    trainer = TrainerConfig(accelerator="gpu", devices="1", strategy="deepspeed", zero_stage=stage,
                            precision="bf16-mixed", micro_batch_size=BATCH, max_steps=STEPS, gradient_clip_val=1.0,
                            enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    return RunConfig(model=preset("tiny_vit"), optim=OptimConfig(lr=1e-3, warmup_steps=1), trainer=trainer,
                     out_dir=out_dir)


@pytest.mark.parametrize("stage", [2, 3])
def test_lightning_deepspeed_bf16_fit_convert_reload(stage, tmp_path):
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    from clipl.data.transforms import normalize
    from clipl.distributed.convert import convert_zero_checkpoint
    from clipl.models.export import openai_state_dict
    from clipl.models.clip import CLIPModel
    from clipl.module import CLIPModule
    from clipl.training.trainer import build_trainer

    torch.manual_seed(0)
    cfg = _config(stage, str(tmp_path))
    system = CLIPModule(cfg)
    trainer = build_trainer(cfg.trainer, out_dir=str(tmp_path), callbacks=[], loggers=False)
    data = Synthetic(BATCH * STEPS, cfg.model.image.image_size, cfg.model.text.context_length)
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=BATCH))
    assert trainer.global_step == STEPS
    ds_config = trainer.strategy.config
    assert ds_config["train_micro_batch_size_per_gpu"] == BATCH and ds_config["zero_optimization"]["stage"] == stage
    assert ds_config["bf16"]["enabled"] and ds_config["gradient_clipping"] == 1.0

    ckpt_dir = tmp_path / "ds.ckpt"
    trainer.save_checkpoint(ckpt_dir)
    assert ckpt_dir.is_dir() and (ckpt_dir / "latest").read_text().strip() == "checkpoint"

    # The engine's fp32 master weights and its bf16 outputs on a probe batch.
    params = dict(system.named_parameters())
    master = {n: safe_get_full_fp32_param(p).float().cpu() for n, p in params.items() if p.requires_grad}
    probe = next(iter(torch.utils.data.DataLoader(Synthetic(4, cfg.model.image.image_size,
                                                            cfg.model.text.context_length), batch_size=4)))
    images, tokens = normalize(probe["image"].cuda()), probe["text"].cuda()
    system.eval()
    with torch.no_grad(), deepspeed.zero.GatheredParameters(list(params.values()), enabled=stage == 3):
        engine_out = system.model(images.bfloat16(), tokens)

    ckpt = torch.load(convert_zero_checkpoint(ckpt_dir, tmp_path / "fp32.ckpt"), weights_only=True)
    for name, want in master.items():
        torch.testing.assert_close(ckpt["state_dict"][name], want, rtol=0, atol=0, msg=name)
    assert ckpt["hyper_parameters"]["config"]["trainer"]["zero_stage"] == stage

    model = CLIPModel.from_config(system.config.model)
    model.load_state_dict(openai_state_dict(ckpt), strict=True)
    model = model.cuda().eval()
    with torch.no_grad():
        fp32_out = model(images, tokens)
        bf16_out = model.bfloat16()(images.bfloat16(), tokens)
    # Same bf16 weights (master rounded) and kernels as the engine: close; fp32 reload: within bf16 error.
    for got, tol in ((bf16_out, 1e-2), (fp32_out, 3e-2)):
        torch.testing.assert_close(got.image_features, engine_out.image_features, rtol=0, atol=tol)
        torch.testing.assert_close(got.text_features, engine_out.text_features, rtol=0, atol=tol)


class _NaNAt(torch.nn.Module):
    """Wraps an objective so that the loss of one chosen step is NaN (as an fp overflow would make it)."""

    def __init__(self, objective, step: int):
        super().__init__()
        self.objective, self.step, self.calls = objective, step, 0

    def forward(self, *args):
        loss = self.objective(*args)
        self.calls += 1
        return loss * float("nan") if self.calls == self.step else loss


@pytest.mark.parametrize("stage", [2, 3])
def test_lightning_deepspeed_discards_a_nonfinite_step(stage, tmp_path):
    from deepspeed.utils import safe_get_full_fp32_param

    from clipl.module import CLIPModule
    from clipl.training.trainer import build_trainer

    torch.manual_seed(0)
    cfg = _config(stage, str(tmp_path))
    system = CLIPModule(cfg)
    system.configure_model()
    system.objective = _NaNAt(system.objective, step=STEPS)  # the last step's loss is NaN
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snap = {n: safe_get_full_fp32_param(p).float().cpu() for n, p in module.named_parameters()
                    if p.requires_grad}
            # The inner optimizer steps DeepSpeed's flat fp32 partitions (one GPU: this rank holds them
            # all); per-parameter optimizer-state lookups are not linked for every stage/precision.
            inner = trainer.strategy.deepspeed_engine.optimizer.optimizer
            for i, state in enumerate(inner.state.values()):
                snap |= {f"{k}:{i}": torch.as_tensor(v).float().cpu() for k, v in state.items()}
            snapshots.append(snap)

    trainer = build_trainer(cfg.trainer, out_dir=str(tmp_path), callbacks=[Snapshot()],
                            loggers=False)
    data = Synthetic(BATCH * STEPS, cfg.model.image.image_size, cfg.model.text.context_length)
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=BATCH))
    assert system.nonfinite_steps == 1 and trainer.strategy.deepspeed_engine.skipped_steps == 1
    before, after = snapshots[-2], snapshots[-1]
    for key, want in before.items():  # weights and Adam moments untouched by the NaN step
        torch.testing.assert_close(after[key], want, rtol=0, atol=0, msg=key)
