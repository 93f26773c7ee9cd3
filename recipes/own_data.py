"""Your own data: train on your images and captions, evaluate zero-shot and by a linear probe on your classes.

    clipl data pack my_images/ --out my_shards          # image.jpg + image.txt pairs, or a .csv/.tsv/.parquet
    lightning run own_data data.train=my_shards \
        eval.zeroshot=[my_labelled] eval.linear_probe=[my_labelled] out_dir=runs/mine

`my_labelled` is an ImageFolder: one sub-folder per class (the folder name, underscores read as spaces,
is the class name; a classnames.txt beside the folders overrides the names, in sorted folder order)
and optionally a templates.txt with one "{}" prompt per line (otherwise OpenAI's 80 ImageNet
prompts). docs/data.md walks through it end to end. The defaults suit a few thousand images on a CPU;
for more data swap in a bigger model (model=rn50 or model=vit_b32), raise trainer.max_epochs and
trainer.micro_batch_size, and add --accelerator gpu --devices N.

Batch plan on 8, 64 and 256 GPUs (`clipl config recipes/own_data.py --devices 8` prints it):
    8 GPUs:   contrastive batch 512 = 1 micro-batch of 64 per GPU x 8
    64 GPUs:  contrastive batch 4,096 = 1 micro-batch of 64 per GPU x 64
    256 GPUs: contrastive batch 16,384 = 1 micro-batch of 64 per GPU x 256
"""

from omegaconf import MISSING

from clipl.config.schema import RunConfig
from clipl.data.config import DataConfig
from clipl.eval.config import EvalConfig
from clipl.models import preset
from clipl.optim import OptimConfig, adam_defaults_for
from clipl.training.config import LoggingConfig, TrainerConfig


def config() -> RunConfig:
    model = preset("tiny_rn")  # 64 px ModifiedResNet + 2-layer text Transformer: trains on a CPU
    betas, eps = adam_defaults_for(model.image)  # the paper's ResNet settings (0.9, 0.999), 1e-8
    return RunConfig(
        model=model,
        # data.train is left unset on purpose: the run refuses to start without it (the shards that
        # `clipl data pack` wrote: the folder, or its {00000..N}.tar pattern).
        data=DataConfig(train=MISSING, num_workers=2, shuffle_buffer=500),
        optim=OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=20, betas=betas, eps=eps),
        trainer=TrainerConfig(accelerator="auto", micro_batch_size=64, max_epochs=30, log_every_n_steps=5),
        logging=LoggingConfig(backend="csv"),
        # Evaluation runs when training ends; set the sets on the command line (eval.zeroshot=[DIR]).
        eval=EvalConfig(zeroshot=[], linear_probe=[]),
        out_dir="runs/own_data",
    )
