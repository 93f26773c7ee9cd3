"""Template for your own recipe: a new image tower, a new objective and a new data source, one file.

    clipl cp custom my_recipe.py && lightning run my_recipe.py

Everything registered here (tower arch, objective name) must be registered again wherever the run's
config or checkpoints are loaded, so keep such code in an importable module once it outgrows a file.

Batch plan on 8, 64 and 256 GPUs (`clipl config recipes/custom.py --devices 8` prints it):
    8 GPUs:   contrastive batch 512 = 1 micro-batch of 64 per GPU x 8
    64 GPUs:  contrastive batch 4,096 = 1 micro-batch of 64 per GPU x 64
    256 GPUs: contrastive batch 16,384 = 1 micro-batch of 64 per GPU x 256
"""

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from clipl.config.schema import RunConfig
from clipl.data.shapes_render import caption, render_scene
from clipl.distributed.plan import BatchPlan
from clipl.models import ModelConfig, preset, register
from clipl.objectives import ObjectiveConfig, register_objective
from clipl.objectives.contrastive import effective_logit_scale
from clipl.objectives.distributed import all_gather_with_grad, world
from clipl.optim import OptimConfig
from clipl.tokenizer import get_tokenizer
from clipl.training.config import LoggingConfig, TrainerConfig


# 1. A tower: a config dataclass with an `arch` field, a module honouring the tower contract, a builder.
@dataclass
class ConvNetConfig:
    """A small all-convolutional image tower."""

    arch: str = "convnet"
    """Registered architecture name."""
    image_size: int = 64
    """Input resolution."""
    width: int = 32
    """Channels of the first stage (doubled at each of the three stages)."""


class ConvNet(nn.Module):
    def __init__(self, cfg: ConvNetConfig, embed_dim: int):
        super().__init__()
        w = cfg.width
        self.image_size, self.output_dim = cfg.image_size, embed_dim
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU())
            for c_in, c_out in ((3, w), (w, 2 * w), (2 * w, 4 * w))
        )
        self.proj = nn.Linear(4 * w, embed_dim, bias=False)
        self.grad_checkpointing = False

    def forward(self, x):
        for stage in self.stages:
            use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
            x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False) if use_ckpt else stage(x)
        return self.proj(x.mean(dim=(2, 3)))

    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set:
        return set()  # gains and biases (ndim < 2) are excluded by the generic rule already

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True):
        frozen = self.stages[: len(self.stages) - unlocked_groups] if unlocked_groups else self.stages
        for p in frozen.parameters():
            p.requires_grad = False
        if freeze_bn_stats:
            frozen.eval()


@register("convnet", config=ConvNetConfig)
def build_convnet(cfg: ConvNetConfig, embed_dim: int) -> nn.Module:
    return ConvNet(cfg, embed_dim)


# 2. An objective: a config with a `name` field and a module taking normalised features + temperature.
@dataclass
class SmoothClipConfig(ObjectiveConfig):
    """CLIP's symmetric cross-entropy with label smoothing."""

    name: str = "clip_smooth"
    """Registered objective name."""
    label_smoothing: float = 0.1
    """Probability mass spread over the negatives."""


@register_objective("clip_smooth", config=SmoothClipConfig)
class SmoothClipLoss(nn.Module):
    uses_logit_bias = False

    def __init__(self, cfg: SmoothClipConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, image, text, logit_scale, logit_bias=None):
        scale = effective_logit_scale(logit_scale, self.cfg.max_logit_scale)
        rank, size = world()
        # Local rows against the global batch, as clipl's ClipLoss (gradients flow through the gather).
        all_image = all_gather_with_grad(image) if size > 1 else image
        all_text = all_gather_with_grad(text) if size > 1 else text
        labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
        ls = self.cfg.label_smoothing
        return (F.cross_entropy(scale * image @ all_text.T, labels, label_smoothing=ls)
                + F.cross_entropy(scale * text @ all_image.T, labels, label_smoothing=ls)) / 2


# 3. A data source: any LightningDataModule whose batches are {"image": uint8 (B,3,H,W), "text": tokens}.
class RenderedShapes(IterableDataset):
    """Captioned shapes drawn on the fly: an endless stream, different in every worker and rank."""

    def __init__(self, image_size: int, context_length: int, batch_size: int, seed: int):
        self.image_size, self.context_length, self.batch_size, self.seed = (
            image_size, context_length, batch_size, seed)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, info.id if info else 0])
        tokenizer = get_tokenizer()
        while True:
            images, captions = [], []
            for _ in range(self.batch_size):
                img, objects, bg = render_scene(rng, self.image_size, int(rng.integers(1, 3)))
                images.append(torch.from_numpy(img).permute(2, 0, 1))
                captions.append(caption(objects, bg, rng))
            yield {"image": torch.stack(images), "text": tokenizer(captions, self.context_length)}


class RenderedShapesData(L.LightningDataModule):
    def __init__(self, cfg: RunConfig, plan: BatchPlan):
        super().__init__()
        self.cfg, self.plan = cfg, plan

    def train_dataloader(self):
        # One batch per optimiser step and rank: the plan's micro-batch x accumulation.
        ds = RenderedShapes(self.cfg.model.image.image_size, self.cfg.model.text.context_length,
                            self.plan.per_device_batch_size, self.cfg.seed)
        return DataLoader(ds, batch_size=None, num_workers=self.cfg.data.num_workers)


def config() -> RunConfig:
    model = ModelConfig(embed_dim=128, image=ConvNetConfig(), text=preset("tiny_vit").text)
    cfg = RunConfig(
        model=model,
        objective=SmoothClipConfig(),
        optim=OptimConfig(lr=2e-3, weight_decay=0.1, warmup_steps=20),
        trainer=TrainerConfig(accelerator="cpu", devices="1", micro_batch_size=64, max_steps=300,
                              log_every_n_steps=10),
        logging=LoggingConfig(backend="csv"),
        out_dir="runs/custom",
    )
    cfg.data.num_workers = 1
    return cfg


def datamodule(cfg: RunConfig, plan: BatchPlan) -> L.LightningDataModule:
    """Replaces clipl's CLIPDataModule (its data.* source fields are then unused)."""
    return RenderedShapesData(cfg, plan)
