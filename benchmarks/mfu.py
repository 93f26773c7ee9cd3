"""perf/mfu as a clipl run logs it: CLIPModule through Trainer.fit with PerfMonitor on synthetic batches.

    python benchmarks/mfu.py --device cuda --presets vit_b16 rn50x4 --batch 256 --precision bf16-mixed
    python benchmarks/mfu.py --device cpu --presets tiny_vit --batch 8 --steps 4 --peak-tflops 1

One JSON line per preset: the perf/* metrics of the last logging window (the second half of the
steps; the first half, with cuDNN autotuning and allocator warm-up, is its own window).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from train_step import _Iterable, build_clipl, synthetic_batches


def measure(name: str, batch: int, precision: str, device: torch.device, steps: int, peak_tflops) -> dict:
    from clipl.callbacks.throughput import PerfMonitor
    from clipl.flops import model_flops
    from clipl.training.config import TrainerConfig
    from clipl.training.trainer import build_trainer

    system = build_clipl(name, precision, device)
    m = system.model
    batches = synthetic_batches(steps, batch, m.image_size, m.context_length, device)
    cfg = TrainerConfig(accelerator="gpu" if device.type == "cuda" else "cpu", devices="1", precision=precision,
                        micro_batch_size=batch, max_steps=steps, log_every_n_steps=max(1, steps // 2),
                        enable_progress_bar=False, enable_model_summary=False, peak_tflops=peak_tflops)
    monitor = PerfMonitor(flops=model_flops(system.config.model, system.config.optim), peak_tflops=peak_tflops)
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(cfg, out_dir=out, callbacks=[monitor], loggers=False)
        trainer.fit(system, train_dataloaders=_Iterable(batches))
    got = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("perf/")}
    return {"case": "mfu", "preset": name, "batch": batch, "precision": precision, "device": str(device),
            "steps": steps, "peak_tflops": None if monitor.peak_flops is None else monitor.peak_flops / 1e12,
            "train_gflops_per_sample": monitor.flops.train(batch) / 1e9, **got}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", default=["vit_b16", "rn50x4"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps (two logging windows)")
    parser.add_argument("--peak-tflops", type=float, help="device peak (default: clipl's table on CUDA)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for name in args.presets:
        print(json.dumps(measure(name, args.batch, args.precision, device, args.steps, args.peak_tflops)), flush=True)
        torch.cuda.empty_cache() if device.type == "cuda" else None


if __name__ == "__main__":
    main()
