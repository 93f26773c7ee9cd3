"""RN50x4 as in the CLIP paper: batch 32,768, 32 epochs, lr 5e-4, bf16, DeepSpeed ZeRO-2.

One node with 8 GPUs:
    lightning run recipes/rn50x4.py --devices 8 data.train='/data/laion/{00000..41407}.tar'
N nodes (the same command on each node, node_rank 0..N-1):
    lightning run recipes/rn50x4.py --devices 8 --num-nodes N --node-rank R \
        --main-address HOST0 --main-port 29500 data.train='/data/laion/{00000..41407}.tar'
Under SLURM (srun) or torchrun the launcher's environment is detected; pass --devices/--num-nodes.
A smoke run on a CPU:
    lightning run recipes/rn50x4.py --accelerator cpu --strategy auto --precision 32-true \
        data=shapes trainer.global_batch_size=4 trainer.micro_batch_size=2 trainer.max_steps=2

Batch plan on 8, 64 and 256 GPUs (`clipl config recipes/rn50x4.py --devices 8` prints it):
    8 GPUs:   contrastive batch 32,768 = 16 micro-batches of 256 per GPU x 8
    64 GPUs:  contrastive batch 32,768 = 2 micro-batches of 256 per GPU x 64
    256 GPUs: contrastive batch 32,768 = 1 micro-batch of 128 per GPU x 256 (with trainer.micro_batch_size=128)
"""

from clipl.paper import paper_config


def config():
    cfg = paper_config("rn50x4", lr=5e-4, micro_batch_size=256)
    # Zero-shot ImageNet during training: point eval.zeroshot at an ImageFolder of the val set, e.g.
    # eval.zeroshot=[/data/imagenet/val] eval.every_n_steps=2000
    return cfg
