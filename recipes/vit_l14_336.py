"""ViT-L/14@336px as in the CLIP paper: a trained ViT-L/14, one more epoch at 336 px, lr 2e-5, bf16, ZeRO-2.

Starts from the ViT-L/14 checkpoint given on the command line: a vit_l14 run's checkpoint, a
`clipl export`, an open_clip folder or OpenAI's ViT-L-14.pt (docs/weights.md):
    lightning run recipes/vit_l14_336.py --devices 8 model.init_from=runs/vit_l14/checkpoints/last.ckpt \
        data.train='/data/laion/{00000..41407}.tar'
Everything loads as it is except the image tower's positional embedding, which is interpolated from
the 16x16 patch grid of 224 px to the 24x24 grid of 336 px (bicubic on the grid, class token kept;
clipl.models.pos_embed); the start-up log lists it as resized. The rest is the paper's setup (batch
32,768, AdamW with weight decay 0.2, 2,000 warm-up steps then cosine) at a peak learning rate of 2e-5,
for one epoch. The optimiser starts afresh; to continue an interrupted 336-px run, relaunch the same
command (its own checkpoint wins over model.init_from).

Batch plan on 8, 64 and 256 GPUs (`clipl config recipes/vit_l14_336.py --devices 8` prints it):
    8 GPUs:   contrastive batch 32,768 = 64 micro-batches of 64 per GPU x 8
    64 GPUs:  contrastive batch 32,768 = 8 micro-batches of 64 per GPU x 64
    256 GPUs: contrastive batch 32,768 = 2 micro-batches of 64 per GPU x 256
"""

from omegaconf import MISSING

from clipl.paper import paper_config


def config():
    # 577 tokens per image instead of 257: 64 pairs per GPU per forward, with activation checkpointing.
    cfg = paper_config("vit_l14_336", lr=2e-5, micro_batch_size=64)
    cfg.model.init_from = MISSING  # required: the ViT-L/14 weights this epoch continues from
    cfg.trainer.max_epochs = 1
    cfg.out_dir = "runs/vit_l14_336"
    return cfg
