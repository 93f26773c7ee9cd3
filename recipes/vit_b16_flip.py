"""ViT-B/16 with FLIP patch dropout: the paper recipe, with half of each image's patches dropped in training.

Dropping a random 50% of the patch tokens (FLIP, Li et al. 2023) about halves the image tower's cost per
sample; evaluation always sees every patch. Same launch as recipes/vit_b16.py:
    lightning run recipes/vit_b16_flip.py --devices 8 data.train='/data/laion/{00000..41407}.tar'

Batch plan on 8, 64 and 256 GPUs (`clipl config recipes/vit_b16_flip.py --devices 8` prints it):
    8 GPUs:   contrastive batch 32,768 = 16 micro-batches of 256 per GPU x 8
    64 GPUs:  contrastive batch 32,768 = 2 micro-batches of 256 per GPU x 64
    256 GPUs: contrastive batch 32,768 = 1 micro-batch of 128 per GPU x 256 (with trainer.micro_batch_size=128)
"""

import dataclasses

from clipl.paper import paper_config


def config():
    cfg = paper_config("vit_b16", lr=5e-4, micro_batch_size=256)
    cfg.model.image = dataclasses.replace(cfg.model.image, patch_dropout=0.5)
    cfg.out_dir = "runs/vit_b16_flip"
    return cfg
