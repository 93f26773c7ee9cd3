"""The CLIP paper's training setup (Radford et al. 2021, §2.5 and Appendix F) as a RunConfig.

The paper recipes (recipes/rn50.py ...) start from this and change what differs per model. Batch
32,768 over 32 epochs, AdamW with decoupled weight decay 0.2 (none on gains, biases, embeddings
and the temperature), 2,000 warm-up steps then cosine, the temperature initialised to 0.07 and
clipped at a logit scale of 100, mixed precision and activation checkpointing.
"""

from __future__ import annotations

import dataclasses

from omegaconf import MISSING

from clipl.config.schema import RunConfig
from clipl.data.config import DataConfig
from clipl.models import preset
from clipl.optim import OptimConfig, adam_defaults_for
from clipl.training.config import CheckpointConfig, LoggingConfig, TrainerConfig

GLOBAL_BATCH = 32_768
EPOCHS = 32
WARMUP_STEPS = 2_000
WEIGHT_DECAY = 0.2


def paper_config(model: str, lr: float, micro_batch_size: int = 256) -> RunConfig:
    """The paper's setup for preset ``model`` at peak learning rate ``lr``, on GPUs with ZeRO-2.

    ``micro_batch_size`` is what one GPU puts through one forward/backward; each GPU accumulates
    32,768 / (micro_batch_size x GPUs) micro-batches per step, and with contrastive accumulation the
    loss still contrasts all 32,768 pairs. The global batch must divide: on more GPUs than
    32,768 / micro_batch_size, lower trainer.micro_batch_size (`clipl config` says by how much).
    """
    model_cfg = dataclasses.replace(preset(model), grad_checkpointing=True)
    betas, eps = adam_defaults_for(model_cfg.image)  # ViT: 0.9/0.98, 1e-6; ResNet: 0.9/0.999, 1e-8
    return RunConfig(
        model=model_cfg,
        data=DataConfig(train=MISSING, num_workers=8),
        optim=OptimConfig(
            lr=lr, weight_decay=WEIGHT_DECAY, betas=betas, eps=eps, warmup_steps=WARMUP_STEPS
        ),
        trainer=TrainerConfig(
            accelerator="gpu",
            strategy="deepspeed",
            zero_stage=2,
            precision="bf16-mixed",
            max_epochs=EPOCHS,
            micro_batch_size=micro_batch_size,
            global_batch_size=GLOBAL_BATCH,
        ),
        logging=LoggingConfig(tags=[model, "paper"]),
        checkpoint=CheckpointConfig(every_n_steps=1000),
        out_dir=f"runs/{model}",
    )
