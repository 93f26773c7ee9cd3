"""ViT-B/16 with FLIP patch dropout: the paper recipe, with half of each image's patches dropped in training.

Dropping a random 50% of the patch tokens (FLIP, Li et al. 2023) about halves the image tower's cost per
sample; evaluation always sees every patch. Same launch as recipes/vit_b16.py:
    lightning run recipes/vit_b16_flip.py --devices 8 data.train='/data/laion/{00000..41407}.tar'
"""

import dataclasses

from clipl.paper import paper_config


def config():
    cfg = paper_config("vit_b16", lr=5e-4, micro_batch_size=256)
    cfg.model.image = dataclasses.replace(cfg.model.image, patch_dropout=0.5)
    cfg.out_dir = "runs/vit_b16_flip"
    return cfg
