"""clipl's blockwise retrieval vs the full-similarity-matrix way (clip_benchmark's), same metrics asserted.

    python benchmarks/eval_retrieval.py --images 5000 --captions 5 --dim 512 --chunk 1024

Each variant runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own; the
figures are time and peak memory above the features themselves.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _features(n_img: int, caps: int, dim: int):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    t2i = torch.arange(n_img).repeat_interleave(caps)
    txt = F.normalize(img[t2i] + 0.8 * torch.randn(len(t2i), dim, generator=g), dim=-1)
    return img, txt, t2i


def full_matrix(img, txt, t2i, ks):
    """The straightforward way: the whole (N_txt, N_img) score matrix, then top-k per row."""
    scores = txt @ img.T
    pos = t2i[:, None] == torch.arange(img.shape[0])[None, :]
    out = {}
    for k in ks:
        top = scores.topk(k, dim=1).indices
        out[f"image_retrieval_recall@{k}"] = pos.gather(1, top).any(1).float().mean().item()
        top = scores.T.topk(k, dim=1).indices
        out[f"text_retrieval_recall@{k}"] = pos.T.gather(1, top).any(1).float().mean().item()
    return out


def _child(variant: str, n_img: int, caps: int, dim: int, chunk: int) -> None:
    torch.set_num_threads(1)
    from clipl.eval.retrieval import retrieval_metrics  # imported before the baseline: not counted

    img, txt, t2i = _features(n_img, caps, dim)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "clipl":
        m = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10), chunk_size=chunk)
    else:
        m = full_matrix(img, txt, t2i, (1, 5, 10))
    dt = time.perf_counter() - start
    extra_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"variant": variant, "seconds": dt, "extra_peak_mib": extra_mib, "metrics": m}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--captions", type=int, default=5)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--child")
    a = p.parse_args()
    if a.child:
        return _child(a.child, a.images, a.captions, a.dim, a.chunk)
    res = {}
    for v in ("clipl", "full"):
        cmd = [sys.executable, __file__, "--child", v, "--images", str(a.images), "--captions", str(a.captions),
               "--dim", str(a.dim), "--chunk", str(a.chunk)]
        res[v] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    for k, v in res["full"]["metrics"].items():
        # No ties in continuous random features, so both definitions agree exactly.
        assert abs(res["clipl"]["metrics"][k] - v) < 1e-6, (k, res["clipl"]["metrics"][k], v)
    n_txt = a.images * a.captions
    print(f"{a.images} images x {n_txt} captions, dim {a.dim}, chunk {a.chunk}, 1 thread; metrics identical")
    for v in ("clipl", "full"):
        r = res[v]
        print(f"  {v:5s}: {r['seconds']:.2f} s, peak memory above the features {r['extra_peak_mib']:.0f} MiB")
    print(f"  R@1 i->t {res['clipl']['metrics']['text_retrieval_recall@1']:.4f}  t->i {res['clipl']['metrics']['image_retrieval_recall@1']:.4f}")


if __name__ == "__main__":
    main()
