"""clipl vs open_clip objectives: forward + backward time on the same features, interleaved.

    python benchmarks/objectives.py --batch 256 --dim 512 --rounds 20

Rounds run A B B A ... in one process so drift and load affect both sides alike; the figure is
the ratio of medians (open_clip time / clipl time, > 1 means clipl is faster).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from open_clip import loss as oc_loss

from clipl.objectives import ClipLoss, SigLipLoss


def _time(fn, img, txt, reps):
    start = time.perf_counter()
    for _ in range(reps):
        i, t = img.detach().requires_grad_(True), txt.detach().requires_grad_(True)
        fn(i, t).backward()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(args.batch, args.dim, generator=g), dim=-1)
    txt = F.normalize(torch.randn(args.batch, args.dim, generator=g), dim=-1)
    scale, bias = torch.tensor(math.log(1 / 0.07)), torch.tensor(-10.0)
    ours_clip, theirs_clip = ClipLoss(), oc_loss.ClipLoss()
    ours_sig, theirs_sig = SigLipLoss(), oc_loss.SigLipLoss()
    pairs = {
        "clip": (lambda i, t: ours_clip(i, t, scale), lambda i, t: theirs_clip(i, t, scale.exp())),
        "siglip": (
            lambda i, t: ours_sig(i, t, scale, bias),
            lambda i, t: theirs_sig(i, t, scale.exp(), bias),
        ),
    }
    print(f"batch {args.batch}, dim {args.dim}, {args.threads} thread(s), {args.rounds} rounds x {args.reps}")
    for name, (ours, theirs) in pairs.items():
        times = {"clipl": [], "open_clip": []}
        for _ in range(2):  # warm-up
            _time(ours, img, txt, 1), _time(theirs, img, txt, 1)
        for r in range(args.rounds):
            order = [("clipl", ours), ("open_clip", theirs)]
            for label, fn in order if r % 2 == 0 else order[::-1]:
                times[label].append(_time(fn, img, txt, args.reps))
        a, b = statistics.median(times["clipl"]), statistics.median(times["open_clip"])
        print(f"{name:7s} clipl {a * 1e3:8.3f} ms  open_clip {b * 1e3:8.3f} ms  ratio {b / a:5.3f}")


if __name__ == "__main__":
    main()
