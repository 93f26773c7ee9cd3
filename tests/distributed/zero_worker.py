"""Train a tiny CLIPModel with ``deepspeed.initialize`` on CPU (gloo, one process) and save ZeRO checkpoints.

Run as a subprocess by test_convert.py (through :func:`run_script`, which the other worker scripts
here share), so the process group and DeepSpeed's globals never leak into the pytest process:
    python zero_worker.py OUT_DIR PORT PRECISION MODEL STAGE [STAGE ...]
(MODEL: `micro`, `micro_vit` or a preset name such as tiny_vit)
(STAGE: 1, 2, 3, or 3i = ZeRO-3 with the model built under deepspeed.zero.Init)

For each stage it writes OUT_DIR/zero{stage}/ (a Lightning-style ZeRO directory: tag `checkpoint`,
client state with hyper_parameters) and OUT_DIR/ref{stage}.pt with the engine's gathered fp32 weights
(keys as in the LightningModule, i.e. prefixed `model.`), a probe batch and the engine's outputs on it.
"""

from __future__ import annotations

import os
import sys

import torch


def run_script(script: str, out: str, *args: str, timeout: int = 900) -> None:
    """Run a worker script of this folder as ``python SCRIPT OUT PORT *ARGS`` on DeepSpeed's CPU
    accelerator (a fresh process: the process group and DeepSpeed's globals stay out of pytest)."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), script), out, str(port), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def batch(model, seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    size, ctx, vocab = model.image_size, model.context_length, model.text_tower.vocab_size
    images = torch.randn(n, 3, size, size, generator=g)
    tokens = torch.randint(1, vocab - 1, (n, ctx), generator=g)
    tokens[:, ctx // 2] = vocab - 1  # an end-of-text token (the row maximum): the text tower pools there
    tokens[:, ctx // 2 + 1:] = 0
    return images, tokens


def micro_config(name: str):
    """~0.1M-parameter CLIPs for fast checks: `micro` (ResNet, with BatchNorm buffers) or `micro_vit`."""
    from clipl.models import ModelConfig
    from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
    from clipl.models.backbones.text_transformer import TextTransformerConfig
    from clipl.models.backbones.vit import ViTConfig

    if name == "micro":
        image = ModifiedResNetConfig(image_size=32, layers=[1, 1, 1, 1], width=8, heads=2)
    else:
        image = ViTConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2)
    text = TextTransformerConfig(context_length=16, vocab_size=1000, width=32, heads=2, layers=1)
    return ModelConfig(embed_dim=32, image=image, text=text)


def model_config(name: str):
    """`micro`, `micro_vit` or a preset name -> ModelConfig."""
    from clipl.models import preset

    if name.startswith("micro"):
        return micro_config(name)
    try:
        return preset(name)
    except ModuleNotFoundError:
        # An optional tower module (timm/hf) not in this checkout yet: the core ones registered anyway.
        import clipl.models.presets  # noqa: F401

        return preset(name)


def build(name: str):
    """A CLIPModel for ``name``."""
    from clipl.models.clip import CLIPModel

    return CLIPModel.from_config(model_config(name))


def system(name: str):
    """An unbuilt CLIPModule for ``name`` (towers come with configure_model, as under Lightning)."""
    from clipl.config.schema import RunConfig
    from clipl.module import CLIPModule

    return CLIPModule(RunConfig(model=model_config(name)))


def run_stage(out_dir: str, precision: str, model_name: str, stage_arg: str) -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    from clipl.distributed.compat import patch_deepspeed_scalar_broadcast
    from clipl.distributed.deepspeed import deepspeed_config
    from clipl.training.config import TrainerConfig

    patch_deepspeed_scalar_broadcast()  # logit_scale is 0-dim: see clipl.distributed.compat
    stage, zero_init = int(stage_arg[0]), stage_arg.endswith("i")
    cfg = TrainerConfig(strategy="deepspeed", zero_stage=stage, precision=precision, gradient_clip_val=1.0)
    ds_config = deepspeed_config(cfg, micro_batch_size=4, accumulate=1)
    extra = {}
    torch.manual_seed(0)
    if zero_init:
        # As Lightning's configure_model under ZeRO-3: parameters are partitioned as they are created.
        module = system(model_name)
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            module.configure_model()
        torch.manual_seed(0)
        plain = system(model_name)
        plain.configure_model()
        params = dict(module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            # Same seed, same construction: the sharded model must start from the same weights.
            extra["init_max_abs_diff"] = max(
                float((params[n].detach() - p.detach()).abs().max()) for n, p in plain.named_parameters()
            )
        del plain
    else:
        module = system(model_name)
        module.configure_model()
    module.model.positional_embedding.requires_grad_(False)  # a frozen parameter must survive conversion
    trainable = [p for p in module.parameters() if p.requires_grad]
    # eps 1e-6 (the paper's ViT setting), not torch's 1e-8: attention key biases have an exactly-zero
    # true gradient, and with eps 1e-8 Adam turns each stage's different rounding noise in them into
    # full-lr steps, so the stages' losses drifted apart by ~2e-5 relative after one step.
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.1, eps=1e-6)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, model_parameters=trainable,
                                      config=ds_config)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    losses = []
    for step in range(3):
        images, tokens = batch(module.model, step)
        loss = module.compute_loss(engine(images.to(dtype), tokens))  # CLIPModule's fp32 objective
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    # What Lightning puts in the client state (its save_checkpoint drops state_dict/optimizer_states).
    client = {"epoch": 0, "global_step": 3, "hyper_parameters": dict(module.hparams),
              "pytorch-lightning_version": "2.6.6", "loops": {"opaque": 1}}
    module.samples_seen = 12
    module.on_save_checkpoint(client)  # CLIPModule's own counters
    engine.save_checkpoint(os.path.join(out_dir, f"zero{stage_arg}"), tag="checkpoint", client_state=client)

    weights = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None:  # frozen: no optimizer state; gather the module's own copy
            with deepspeed.zero.GatheredParameters([p]):
                full = p.detach().clone()
        weights[name] = full.float().clone()
    for name, b in engine.module.named_buffers():
        weights[name] = b.detach().float().clone()
    images, tokens = batch(module.model, 100)
    engine.eval()
    with torch.no_grad():
        out = engine(images.to(dtype), tokens)
    torch.save({"weights": weights, "images": images, "tokens": tokens, "losses": losses,
                "image_features": out.image_features.float(), "text_features": out.text_features.float(), **extra},
               os.path.join(out_dir, f"ref{stage_arg}.pt"))


def init_cpu_deepspeed(port: str, patch_scalar_broadcast: bool = False) -> None:
    """One gloo process group on CPU for DeepSpeed (the worker scripts' common start)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(1)
    import deepspeed

    if patch_scalar_broadcast:
        from clipl.distributed.compat import patch_deepspeed_scalar_broadcast

        patch_deepspeed_scalar_broadcast()  # logit_scale is 0-dim: see clipl.distributed.compat
    deepspeed.init_distributed(dist_backend="gloo")


def main() -> None:
    out_dir, port, precision, model_name, *stages = sys.argv[1:]
    init_cpu_deepspeed(port)
    for stage in stages:
        run_stage(out_dir, precision, model_name, stage)


if __name__ == "__main__":
    main()
