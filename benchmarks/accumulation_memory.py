"""Peak memory and time of contrastive accumulation: k micro-batches per step at a fixed micro-batch size.

    python benchmarks/accumulation_memory.py --device cuda --preset vit_b32 --micro 64 --ks 1 4 16
    python benchmarks/accumulation_memory.py --device cpu --preset vit_b32 --micro 8 --ks 1 4 16
    python benchmarks/accumulation_memory.py --device cpu --preset vit_b32 --micro 8 --ks 4 --modes contrastive plain

Each k runs in its own process: CLIPModule(cfg, plan=BatchPlan(micro, k)) through Trainer.fit on
synthetic batches of micro x k samples. Reported per k: peak CUDA memory allocated (torch's allocator),
or on CPU the process's peak resident memory; both also minus the same figure after the model was
built, so the model itself is left out. With contrastive accumulation the activations of one
micro-batch are alive at a time (the features of all k are kept, a few KiB per sample), so the peak
should barely grow with k, while the global batch grows k-fold. Also reported: seconds per sample over
the steps after the first (``--modes plain`` runs the same k with plain gradient accumulation, whose
loss contrasts one micro-batch: contrastive accumulation costs one extra no-grad forward per sample).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import lightning as L
import torch


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(preset: str, micro: int, k: int, steps: int, precision: str, device: torch.device,
        contrastive: bool = True) -> dict:
    from clipl.config.schema import RunConfig
    from clipl.distributed.plan import resolve_plan
    from clipl.module import CLIPModule
    from clipl.optim import OptimConfig
    from clipl.training.config import TrainerConfig
    from clipl.training.trainer import build_trainer
    from train_step import _Iterable, _preset, synthetic_batches

    tcfg = TrainerConfig(accelerator="gpu" if device.type == "cuda" else "cpu", devices="1", precision=precision,
                         micro_batch_size=micro, global_batch_size=micro * k, max_steps=steps,
                         contrastive_accumulation=contrastive,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=steps)
    plan = resolve_plan(micro * k, micro, 1, contrastive)
    system = CLIPModule(RunConfig(model=_preset(preset), optim=OptimConfig(warmup_steps=1), trainer=tcfg), plan=plan)
    system.configure_model()
    system.to(device)
    built = _peak(device)
    batches = synthetic_batches(steps, micro * k, system.model.image_size, system.model.context_length, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as out:
        clock = _StepClock(device)
        trainer = build_trainer(tcfg, out_dir=out, callbacks=[clock], loggers=False, plan=plan)
        trainer.fit(system, train_dataloaders=_Iterable(batches))
    peak = _peak(device)
    timed = clock.seconds[1:]  # the first step pays one-off costs (allocator, kernels, optimiser state)
    per_sample = sum(timed) / (len(timed) * micro * k) if timed else float("nan")
    return {"peak_mib": round(peak, 1), "peak_above_model_mib": round(peak - built, 1),
            "ms_per_sample": round(1000 * per_sample, 2),
            "loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


class _StepClock(L.Callback):
    """Wall time of each training step (synchronised on CUDA: this is a benchmark, not a run)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, *args) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._t0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="vit_b32")
    parser.add_argument("--micro", type=int, default=64, help="micro-batch size")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16], help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["contrastive"], choices=["contrastive", "plain"],
                        help="accumulation kinds to measure for each k")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure this k and exit
    parser.add_argument("--mode", default="contrastive", help=argparse.SUPPRESS)  # internal, with --one
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(one(args.preset, args.micro, args.one, args.steps, precision, device,
                             contrastive=args.mode == "contrastive")))
        return
    # A fresh process each: peak RSS is a process-lifetime high-water mark.
    for k, mode in ((k, mode) for k in args.ks for mode in args.modes):
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", str(k), "--mode", mode]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        result = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.stderr[-800:], "rc": proc.returncode}
        print(json.dumps({"case": "accumulation_memory", "preset": args.preset, "device": str(device),
                          "precision": precision, "micro_batch": args.micro, "k": k, "mode": mode,
                          "global_batch": args.micro * k,
                          **result}), flush=True)


if __name__ == "__main__":
    main()
