"""FLOPs per sample and device peaks (clipl.flops): parity with FlopCounterMode on open_clip's models."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipl.flops import compute_dtype, device_peak_flops, model_flops, table_peak_tflops
from clipl.models import preset
from clipl.optim import OptimConfig

open_clip = pytest.importorskip("open_clip")


def _count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def open_clip_flops(name: str) -> dict[str, float]:
    """Forward and forward + backward FLOPs per sample of open_clip's model ``name`` (meta device)."""
    from open_clip.model import CLIP

    cfg = open_clip.get_model_config(name)
    with torch.device("meta"):
        model = CLIP(**cfg)
    size = cfg["vision_cfg"]["image_size"]
    images = torch.zeros(1, 3, size, size, device="meta")
    tokens = torch.zeros(1, cfg["text_cfg"].get("context_length", 77), dtype=torch.long, device="meta")
    out = {}
    for tower, fn, x in (("image", model.encode_image, images), ("text", model.encode_text, tokens)):
        y = []
        out[f"{tower}_forward"] = _count(lambda: y.append(fn(x)))
        out[f"{tower}_train"] = out[f"{tower}_forward"] + _count(lambda: y[0].sum().backward())
    return out


@pytest.mark.parametrize("preset_name, oc_name", [("vit_b32", "ViT-B-32"), ("vit_b16", "ViT-B-16"), ("rn50", "RN50")])
def test_flops_per_sample_match_open_clip(preset_name, oc_name):
    ours, ref = model_flops(preset(preset_name)), open_clip_flops(oc_name)
    # What clipl reports: forward and training FLOPs per sample of the whole model (logits aside).
    assert ours.forward == pytest.approx(ref["image_forward"] + ref["text_forward"], rel=0.05)
    assert ours.image_train + ours.text_train == pytest.approx(ref["image_train"] + ref["text_train"], rel=0.05)
    assert ours.text_forward == ref["text_forward"] and ours.text_train == ref["text_train"]
    if preset_name.startswith("vit"):
        assert ours.image_forward == ref["image_forward"] and ours.image_train == ref["image_train"]
    else:
        # clipl's attention pool asks only its one query (the mean token); open_clip computes all
        # grid^2 + 1 queries and keeps the first. The gap is exactly those discarded rows: their q
        # projection, attention (QK and AV) and output projection.
        width, out_dim, n = 2048, 1024, 7 * 7 + 1
        extra = 2 * (n - 1) * (width * width + 2 * n * width + width * out_dim)
        assert ref["image_forward"] - ours.image_forward == extra


def test_training_flops_follow_locks():
    full = model_flops(preset("tiny_vit"))
    # Backward costs about twice the forward (weight and input gradients); the patch embedding has no
    # input gradient, so a little less than 3x overall.
    assert 2.9 < full.image_train / full.image_forward < 3.0
    assert full.text_train == 3 * full.text_forward
    frozen = model_flops(preset("tiny_vit"), OptimConfig(lock_image=True))
    assert frozen.image_train == frozen.image_forward and frozen.text_train == full.text_train
    partly = model_flops(preset("tiny_vit"), OptimConfig(lock_image=True, lock_image_unlocked_groups=2))
    assert frozen.image_train < partly.image_train < full.image_train
    # The logits: one row of a B x B x embed_dim matmul per sample, forward + backward.
    assert full.train(64) - full.train(32) == 3 * 2 * 128 * 32


@pytest.mark.parametrize(
    "device_name, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H200", "bf16", 989.4),
        ("NVIDIA H200 NVL", "tf32", 417.5),
        ("NVIDIA GH200 480GB", "bf16", 989.4),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA L40S", "bf16", 366.0),
        ("NVIDIA L40", "bf16", 181.0),
        ("NVIDIA L4", "fp16", 121.0),
        ("Tesla V100-SXM2-32GB", "bf16", None),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_peak_table(device_name, dtype, expected):
    assert table_peak_tflops(device_name, dtype) == expected


def test_peak_override_and_cpu():
    cpu = torch.device("cpu")
    assert device_peak_flops(cpu, "32-true") is None
    assert device_peak_flops(cpu, "bf16-mixed", peak_tflops=1.5) == 1.5e12
    assert compute_dtype("bf16-mixed", cpu) == "bf16" and compute_dtype("32-true", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        compute_dtype("8-bit", cpu)
