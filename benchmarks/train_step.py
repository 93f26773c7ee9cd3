"""clipl vs open_clip train-step throughput: same architecture, weights, batch, precision and data.

    python benchmarks/train_step.py                     # CPU: tiny_vit and vit_b32 at batch 16, fp32
    python benchmarks/train_step.py --device cuda       # GPU: vit_b32 and vit_b16 at batch 256, bf16 + MFU

Two levels, each interleaved in one process (rounds A B B A A B ...) so load drift hits both sides:
- module: clipl's CLIPModule.forward_backward (its training step's forward and backward) + the fused
  AdamW step with the on-device skip, in a plain loop, vs open_clip's CLIP +
  ClipLoss + AdamW (its training loop: autocast, backward, step, logit_scale clamp);
- trainer: CLIPModule through lightning Trainer.fit (clipl.training.trainer.build_trainer), vs the same
  open_clip loop. Steps are timed between on_train_batch_end calls, so Trainer start-up is excluded.
The figure is the ratio of median samples/s (clipl / open_clip; > 1 means clipl is faster).
MFU = samples/s x training FLOPs per sample (clipl.flops.model_flops: forward + backward, plus the
logits) / the device's peak dense FLOP/s (clipl.flops.device_peak_flops, or --peak-tflops).
--json prints one JSON line per preset (benchmarks/gpu.sh reads those).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import time

import torch

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synthetic_batches(n: int, batch: int, image_size: int, context_length: int, device: torch.device) -> list:
    """``n`` pipeline-style batches (uint8 images, EOT-terminated tokens) already on ``device``."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        text = torch.randint(1, 49406, (batch, context_length), generator=g)
        text[:, context_length // 2] = 49407  # EOT (the row maximum) where both implementations pool
        text[:, context_length // 2 + 1:] = 0
        images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=g)
        out.append({"image": images.to(device), "text": text.to(device), "key": [str(i)] * batch})
    return out


def _preset(name: str):
    from clipl.models import preset

    try:
        return preset(name)
    except ModuleNotFoundError:  # an optional tower module (timm/hf) missing: the core ones registered
        import clipl.models.presets  # noqa: F401

        return preset(name)


def build_clipl(name: str, precision: str, device: torch.device):
    from clipl.config.schema import RunConfig
    from clipl.module import CLIPModule
    from clipl.optim import OptimConfig
    from clipl.training.config import TrainerConfig

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    # warmup_steps=1: the schedule must fit in the few steps of a Trainer.fit round.
    cfg = RunConfig(model=_preset(name), optim=OptimConfig(warmup_steps=1),
                    trainer=TrainerConfig(accelerator=accelerator, devices="1", precision=precision))
    system = CLIPModule(cfg)
    system.configure_model()
    return system.to(device)


def build_open_clip(system, device: torch.device):
    """open_clip's CLIP with the same architecture and weights as ``system.model``."""
    from open_clip.model import CLIP

    m = system.config.model
    img, txt = m.image, m.text
    if img.arch == "vit":
        vision = dict(layers=img.layers, width=img.width, head_width=img.width // (img.heads or img.width // 64),
                      mlp_ratio=img.mlp_ratio, patch_size=img.patch_size, image_size=img.image_size)
    else:  # ModifiedResNet: open_clip derives heads as width * 32 // head_width
        vision = dict(layers=list(img.layers), width=img.width, image_size=img.image_size,
                      head_width=img.width * 32 // (img.heads or img.width * 32 // 64))
    text = dict(context_length=txt.context_length, vocab_size=txt.vocab_size, width=txt.width,
                heads=txt.heads or txt.width // 64, layers=txt.layers, mlp_ratio=txt.mlp_ratio)
    model = CLIP(embed_dim=m.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=txt.act == "quick_gelu")
    model.load_state_dict(system.model.state_dict(), strict=True)
    return model.to(device)


def open_clip_optimizer(model, cfg):
    """open_clip's training setup: AdamW, no weight decay on gains, biases and logit_scale."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": cfg.weight_decay}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


class Side:
    """One implementation's step function; ``run(batches)`` returns samples/s over them."""

    def __init__(self, step, device, clock=time.perf_counter):
        # clock: wall time by default; benchmarks/patch_dropout.py passes time.process_time.
        self.step, self.device, self.clock = step, device, clock

    def run(self, batches) -> float:
        _sync(self.device)
        start = self.clock()
        for b in batches:
            self.step(b)
        _sync(self.device)
        return sum(len(b["key"]) for b in batches) / (self.clock() - start)


def clipl_side(system, precision, device) -> Side:
    from clipl.optim import build_optimizer

    opt = build_optimizer(system.model, system.config.optim)

    def backward(tensor, last):
        tensor.backward()

    def step(batch):
        # CLIPModule.training_step without a Trainer: its forward/backward (normalise, forward, fp32
        # objective, finiteness flag on the device), then the optimiser step as _optimizer_step takes it
        # (torch's fused AdamW skips a non-finite step on the device via found_inf; no host sync).
        with _autocast(device, precision):
            out = system.forward_backward(batch, backward, mask="none")
        if getattr(opt, "_step_supports_amp_scaling", False):
            opt.found_inf, opt.grad_scale = (~out.finite).to(torch.float32), None
            try:
                opt.step()
            finally:
                del opt.found_inf, opt.grad_scale
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    return Side(step, device)


def open_clip_side(model, cfg, precision, device) -> Side:
    from open_clip.loss import ClipLoss

    from clipl.data.transforms import normalize

    opt, loss_fn = open_clip_optimizer(model, cfg), ClipLoss()

    def step(batch):
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            image_features, text_features, scale = model(normalize(batch["image"]), batch["text"])
            loss = loss_fn(image_features, text_features, scale)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return Side(step, device)


class _Iterable:
    """Pre-made batches as one loader (a bare list would be read as a list of loaders)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TrainerSide:
    """CLIPModule through Trainer.fit; samples/s between the warm-up's last and the final batch end."""

    def __init__(self, system, precision, device, warmup):
        self.system, self.precision, self.device, self.warmup = system, precision, device, warmup

    def run(self, batches) -> float:
        import lightning as L

        from clipl.training.config import TrainerConfig
        from clipl.training.trainer import build_trainer

        times = []
        device = self.device

        class Timer(L.Callback):
            def on_train_batch_end(self, *args):
                _sync(device)
                times.append(time.perf_counter())

        cfg = TrainerConfig(accelerator="gpu" if device.type == "cuda" else "cpu", devices="1",
                            micro_batch_size=len(batches[0]["key"]), precision=self.precision,
                            max_steps=len(batches), enable_progress_bar=False, enable_model_summary=False,
                            log_every_n_steps=10, num_sanity_val_steps=0)
        with tempfile.TemporaryDirectory() as out:
            trainer = build_trainer(cfg, out_dir=out, callbacks=[Timer()], loggers=False)
            trainer.fit(self.system, train_dataloaders=_Iterable(batches))
        timed = batches[self.warmup:]
        return sum(len(b["key"]) for b in timed) / (times[-1] - times[self.warmup - 1])


def interleave(a, b, batches, warmup: int, rounds: int) -> tuple[list[float], list[float]]:
    """Rounds A B B A ...: samples/s of each side per round, timed after ``warmup`` untimed steps."""
    ra, rb = [], []
    for r in range(rounds):
        for side, out in ((a, ra), (b, rb)) if r % 2 == 0 else ((b, rb), (a, ra)):
            if isinstance(side, TrainerSide):  # warms up inside its own fit
                out.append(side.run(batches))
            else:
                side.run(batches[:warmup])
                out.append(side.run(batches[warmup:]))
    return ra, rb


def forward_flops_per_sample(system, batch, precision, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from clipl.data.transforms import normalize

    with torch.no_grad(), _autocast(device, precision), FlopCounterMode(display=False) as counter:
        system.model(normalize(batch["image"]), batch["text"])
    return counter.get_total_flops() / len(batch["key"])


def bench(name: str, batch: int, precision: str, device: torch.device, steps: int, warmup: int, rounds: int,
          trainer_rounds: int, peak_tflops: float | None = None) -> dict:
    system = build_clipl(name, precision, device)
    oc = build_open_clip(system, device)
    m = system.model
    batches = synthetic_batches(warmup + steps, batch, m.image_size, m.context_length, device)
    oc_side = open_clip_side(oc, system.config.optim, precision, device)
    mod_c, mod_o = interleave(clipl_side(system, precision, device), oc_side, batches, warmup, rounds)
    result = {"preset": name, "batch": batch, "precision": precision, "steps": steps,
              "module_clipl": statistics.median(mod_c), "module_open_clip": statistics.median(mod_o),
              "rounds_module": [[round(c, 3), round(o, 3)] for c, o in zip(mod_c, mod_o)]}
    if trainer_rounds:  # after the module level: a module attached to a Trainer cannot log outside fit
        tr_c, tr_o = interleave(TrainerSide(system, precision, device, warmup), oc_side, batches, warmup,
                                trainer_rounds)
        result.update(trainer_clipl=statistics.median(tr_c), trainer_open_clip=statistics.median(tr_o),
                      rounds_trainer=[[round(c, 3), round(o, 3)] for c, o in zip(tr_c, tr_o)])
    from clipl.flops import device_peak_flops, model_flops

    result["fwd_gflops_per_sample"] = forward_flops_per_sample(system, batches[0], precision, device) / 1e9
    train_flops = model_flops(system.config.model, system.config.optim).train(batch)
    result["train_gflops_per_sample"] = train_flops / 1e9
    peak = device_peak_flops(device, precision, peak_tflops)
    if peak:
        result["peak_tflops"] = peak / 1e12
        for key in ("module_clipl", "module_open_clip", "trainer_clipl", "trainer_open_clip"):
            if key in result:
                result[f"mfu_{key}"] = result[key] * train_flops / peak
    del system, oc
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", help="default: tiny_vit vit_b32 (CPU), vit_b32 vit_b16 (GPU)")
    parser.add_argument("--batch", type=int, help="default: 16 (CPU), 256 (GPU)")
    parser.add_argument("--precision", help="default: 32-true (CPU), bf16-mixed (GPU)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default 4 CPU tiny, 2 CPU big, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each timed run")
    parser.add_argument("--rounds", type=int, default=None, help="module-level rounds per side")
    parser.add_argument("--trainer-rounds", type=int, default=None, help="Trainer.fit rounds per side (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: clipl's table on CUDA)")
    parser.add_argument("--json", action="store_true", help="one JSON line per preset instead of the table")
    args = parser.parse_args(argv)
    if args.warmup == 0 and args.trainer_rounds != 0:
        # Trainer.fit rounds time from the end of the last warm-up step (the first step's start is
        # not observable from a callback without a sync before it), so they need one.
        parser.error("--warmup 0 needs --trainer-rounds 0: Trainer rounds time from the last warm-up step")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    presets = args.presets or (["vit_b32", "vit_b16"] if gpu else ["tiny_vit", "vit_b32"])
    batch = args.batch or (256 if gpu else 16)
    precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    if not args.json:
        print(f"device={device} batch={batch} precision={precision} torch={torch.__version__}")
    mfu = gpu or args.peak_tflops is not None
    header = "| preset | level | clipl samples/s | open_clip samples/s | ratio |" + (" MFU clipl | MFU open_clip |"
                                                                                  if mfu else "")
    rows = []
    for name in presets:
        big = name not in ("tiny_vit", "tiny_rn")
        # CPU vit_b32 costs 15-40 s a step on two cores: two timed steps per round are the fewest whose
        # median is not dominated by one step's noise (one step per round swung the ratio 0.3-4.5x).
        steps = args.steps or (20 if gpu else (2 if big else 4))
        warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
        rounds = args.rounds or (6 if gpu else (2 if big else 6))
        trainer_rounds = args.trainer_rounds if args.trainer_rounds is not None else (4 if gpu else (2 if big else 4))
        r = bench(name, batch, precision, device, steps, warmup, rounds, trainer_rounds, args.peak_tflops)
        if args.json:
            for level in ("module", "trainer"):
                if f"{level}_clipl" in r:
                    r[f"ratio_{level}"] = r[f"{level}_clipl"] / r[f"{level}_open_clip"]
            print(json.dumps({"case": "train_step", "device": str(device), **r}), flush=True)
            continue
        print(r, flush=True)
        for level in ("module", "trainer"):
            if f"{level}_clipl" not in r:
                continue
            c, o = r[f"{level}_clipl"], r[f"{level}_open_clip"]
            row = f"| {name} | {level} | {c:.2f} | {o:.2f} | {c / o:.3f} |"
            if f"mfu_{level}_clipl" in r:
                row += f" {r[f'mfu_{level}_clipl']:.1%} | {r[f'mfu_{level}_open_clip']:.1%} |"
            rows.append(row)
        print(f"  forward GFLOPs/sample: {r['fwd_gflops_per_sample']:.2f}")
    if args.json:
        return
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
