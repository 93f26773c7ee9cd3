"""Evaluation callbacks under DeepSpeed ZeRO-3 bf16 on one GPU, and the pure metrics on CUDA.

GPU only:  pytest -m gpu tests/gpu/test_eval_gpu.py
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu


def test_retrieval_and_zero_shot_counts_on_cuda_equal_cpu():
    from clipl.eval.retrieval import retrieval_metrics
    from clipl.eval.zero_shot import ZeroShotCounter

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(3000, 256, generator=g, dtype=torch.float64), dim=-1)
    t2i = torch.arange(3000).repeat_interleave(5)
    txt = F.normalize(img[t2i] + 0.8 * torch.randn(15000, 256, generator=g, dtype=torch.float64), dim=-1)
    # Quantised to multiples of 1/8: every product is exact, so CPU and CUDA see identical scores.
    img, txt = (img * 8).round() / 8, (txt * 8).round() / 8
    cpu = retrieval_metrics(img, txt, t2i, chunk_size=512)
    gpu = retrieval_metrics(img.cuda(), txt.cuda(), t2i.cuda(), chunk_size=512)
    assert cpu == gpu
    logits, labels = txt[:2000, :100], torch.randint(0, 100, (2000,), generator=g)
    a, b = ZeroShotCounter(100), ZeroShotCounter(100, device="cuda")
    a.update(logits, labels)
    b.update(logits.cuda(), labels.cuda())
    assert a.compute() == b.compute()


def test_eval_callbacks_under_zero3_bf16(tmp_path):
    from deepspeed.utils import safe_get_full_fp32_param

    from clipl.callbacks import build_eval_callbacks
    from clipl.config.schema import RunConfig
    from clipl.data.config import DataConfig, ShapesConfig
    from clipl.eval.config import EvalConfig
    from clipl.eval.runner import eval_mode, model_encoders, run_zero_shot
    from clipl.eval.specs import resolve
    from clipl.models import preset
    from clipl.models.clip import CLIPModel
    from clipl.module import CLIPModule
    from clipl.optim import OptimConfig
    from clipl.training.config import TrainerConfig
    from clipl.training.trainer import build_trainer

    shapes = ShapesConfig(train_size=16, val_size=40, eval_size=80, samples_per_shard=20, cache_dir=str(tmp_path / "s"))
    ev = EvalConfig(zeroshot=["shapes:shape"], retrieval=["shapes"], linear_probe=["shapes:colour"], every_n_steps=2,
                    batch_size=16, num_workers=0)
    trainer_cfg = TrainerConfig(accelerator="gpu", devices="1", strategy="deepspeed", zero_stage=3,
                                precision="bf16-mixed", micro_batch_size=8, max_steps=2, enable_progress_bar=False,
                                enable_model_summary=False, log_every_n_steps=1)
    cfg = RunConfig(model=preset("tiny_vit"), optim=OptimConfig(lr=1e-3, warmup_steps=1), trainer=trainer_cfg,
                    data=DataConfig(shapes=shapes), eval=ev, out_dir=str(tmp_path))
    torch.manual_seed(0)
    system = CLIPModule(cfg)
    cbs = build_eval_callbacks(cfg.eval, str(tmp_path), shapes=shapes)
    trainer = build_trainer(cfg.trainer, out_dir=str(tmp_path), callbacks=cbs, loggers=False)
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g),
             "text": torch.cat([torch.randint(1, 49000, (12,), generator=g), torch.tensor([49407]),
                                torch.zeros(19, dtype=torch.long)]), "key": str(i)} for i in range(16)]
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=8))
    files = sorted(p.name for p in (tmp_path / "eval").glob("*.json"))
    assert files == ["linear_probe_shapes_colour_step00000002.json",
                     "zeroshot_classification_shapes_shape_step00000002.json",
                     "zeroshot_retrieval_shapes_step00000002.json"]
    zs = json.loads((tmp_path / "eval" / files[1]).read_text())["metrics"]

    # The same (master) weights unsharded, evaluated in bf16 on the GPU: the sharded evaluation
    # must agree up to bf16 kernel differences on near-tied predictions.
    sd = {n[len("model."):]: safe_get_full_fp32_param(p).float().cpu()
          for n, p in system.named_parameters() if n.startswith("model.")}
    model = CLIPModel.from_config(system.config.model)
    missing, _ = model.load_state_dict(sd, strict=False)
    assert not [k for k in missing if k in dict(model.named_parameters())]
    model = model.cuda().bfloat16()
    enc = model_encoders(model, "cuda", convert_input=lambda x: x.bfloat16())
    with eval_mode(model):
        ref = run_zero_shot(enc, resolve("shapes:shape", "zeroshot", shapes)[0], ev).metrics
    assert abs(ref["acc1"] - zs["acc1"]) <= 0.1 and abs(ref["acc5"] - zs["acc5"]) <= 0.1
