"""FLIP patch dropout: clipl's train step with model.image.patch_dropout=P vs 0, same weights, interleaved.

    python benchmarks/patch_dropout.py                          # vit_b32, batch 8, P=0.5, CPU fp32
    python benchmarks/patch_dropout.py --device cuda --presets vit_b16 --batch 256 --precision bf16-mixed

Both sides are CLIPModule.forward_backward + the AdamW step (benchmarks/train_step.py's module
level) on the same synthetic batches; rounds run A B B A ... so load drift hits both. A second pair of
sides times the image tower alone (forward + backward), where the dropped patches are. Prints one JSON
line per preset: median samples/s of each side, the speed-ups, and the FLOPs ratio clipl.flops predicts.
--clock process times with the process's CPU time (all threads) instead of wall time: on a shared CPU
machine that is what the work costs, whatever the other jobs take.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import time

import torch

import train_step
from train_step import Side, _preset, clipl_side, interleave, synthetic_batches


def clocked(side: Side, clock) -> Side:
    """``side`` timed with ``clock`` (time.perf_counter or time.process_time)."""
    return Side(side.step, side.device, clock)


def image_tower_side(system, precision, device) -> Side:
    from clipl.data.transforms import normalize

    def step(batch):
        system.model.zero_grad(set_to_none=True)
        with train_step._autocast(device, precision):
            out = system.model.visual(normalize(batch["image"]))
        out.float().square().sum().backward()

    return Side(step, device)


def build(name: str, patch_dropout: float, precision: str, device: torch.device, state=None):
    from clipl.config.schema import RunConfig
    from clipl.module import CLIPModule
    from clipl.optim import OptimConfig
    from clipl.training.config import TrainerConfig

    model = _preset(name)
    model.image = dataclasses.replace(model.image, patch_dropout=patch_dropout)
    cfg = RunConfig(model=model, optim=OptimConfig(warmup_steps=1),
                    trainer=TrainerConfig(accelerator="gpu" if device.type == "cuda" else "cpu", devices="1",
                                          precision=precision))
    system = CLIPModule(cfg)
    system.configure_model()
    if state is not None:
        system.model.load_state_dict(state)
    return system.to(device)


def bench(name, batch, p, precision, device, steps, warmup, rounds, clock=time.perf_counter) -> dict:
    from clipl.flops import model_flops

    plain = build(name, 0.0, precision, device)
    dropped = build(name, p, precision, device, state=plain.model.state_dict())
    m = plain.model
    batches = synthetic_batches(warmup + steps, batch, m.image_size, m.context_length, device)
    a, b = interleave(clocked(clipl_side(dropped, precision, device), clock),
                      clocked(clipl_side(plain, precision, device), clock), batches, warmup, rounds)
    ta, tb = interleave(clocked(image_tower_side(dropped, precision, device), clock),
                        clocked(image_tower_side(plain, precision, device), clock), batches, warmup, rounds)
    f_drop, f_plain = model_flops(dropped.config.model), model_flops(plain.config.model)
    return {"case": "patch_dropout", "preset": name, "batch": batch, "patch_dropout": p, "precision": precision,
            "device": str(device), "steps": steps, "rounds": rounds,
            "samples_per_sec_dropout": statistics.median(a), "samples_per_sec_plain": statistics.median(b),
            "speedup": statistics.median(a) / statistics.median(b),
            "flops_ratio": f_plain.train(batch) / f_drop.train(batch),
            "image_tower_speedup": statistics.median(ta) / statistics.median(tb),
            "image_tower_flops_ratio": f_plain.image_train / f_drop.image_train,
            "clock": clock.__name__,
            "per_round": [[round(x, 3), round(y, 3)] for x, y in zip(a, b)]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="+", default=["vit_b32"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch-dropout", type=float, default=0.5)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each timed run")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall")
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name in args.presets:
        print(json.dumps(bench(name, args.batch, args.patch_dropout, args.precision, device, args.steps,
                               args.warmup, args.rounds, clock)), flush=True)


if __name__ == "__main__":
    main()
