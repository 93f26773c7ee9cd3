"""Training data loading: clipl's pipeline vs open_clip's `open_clip_train.data.get_wds_dataset`.

Both read the same WebDataset shards and emit 224-px RandomResizedCrop(0.9-1.0, bicubic) crops plus
77-token captions. open_clip outputs normalised float tensors; clipl outputs uint8 (normalised later
on the accelerator). Figures are images/s per core: images/s divided by max(1, workers) (the workers
do the work; with 0 workers the main process does).

    .venv/bin/python benchmarks/dataloader.py [--samples 384] [--workers 0 1 2] [--out docs/benchmarks/dataloader.md]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from clipl.data.shapes import write_tar

N_SHARDS = 4


def photo_like(w: int, h: int, rng: np.random.Generator) -> bytes:
    """A JPEG with photo-like statistics (smooth structure + texture), so decode cost is realistic."""
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    img = base + rng.normal(0, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_source(folder: Path, short: int, n: int, seed: int) -> str:
    """n samples at short side `short` (4:3 landscape), in N_SHARDS shards with sizes.json."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = [photo_like(short * 4 // 3, short, rng) for _ in range(16)]  # reused: decode cost is the same
    per = n // N_SHARDS
    sizes = {}
    for s in range(N_SHARDS):
        samples = [(f"{s:02d}{i:05d}", {"jpg": images[(s * per + i) % 16],
                                        "txt": f"a photo of sample {i} from shard {s}".encode()}) for i in range(per)]
        write_tar(folder / f"{s:04d}.tar", samples)
        sizes[f"{s:04d}.tar"] = per
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return str(folder / f"{{0000..{N_SHARDS - 1:04d}}}.tar")


def timed(loader, skip_first: int) -> tuple[float, int]:
    """Seconds and images after the first `skip_first` batches (worker start-up is not loading speed)."""
    t0, n = None, 0
    for i, batch in enumerate(loader):
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        if i == skip_first - 1:
            t0 = time.perf_counter()
        elif i >= skip_first:
            n += images.shape[0]
    return time.perf_counter() - t0, n


def run_clipl(pattern: str, n: int, workers: int, batch: int) -> float:
    from clipl.tokenizer import get_tokenizer

    cfg = DataConfig(train=pattern, num_workers=workers, shuffle_buffer=1000, epoch_size=n,
                     pin_memory=False)
    dm = CLIPDataModule(cfg, image_size=224, context_length=77, tokenizer=get_tokenizer(), batch_size=batch)
    dm.setup()
    secs, imgs = timed(dm.train_dataloader(), max(1, workers))
    return imgs / secs / max(1, workers)


def run_open_clip(pattern: str, n: int, workers: int, batch: int) -> float:
    import functools

    import open_clip
    import open_clip_train.data as ocd
    from open_clip.transform import image_transform
    from webdataset import tariterators

    # Compatibility shim, not a change of behaviour: webdataset >= 1.0 ends every shard with an empty
    # end-of-shard marker that open_clip_train 3.3's group_by_keys_nothrow cannot parse (KeyError:
    # 'fname'). Turning the marker off restores the webdataset 0.2 behaviour open_clip was written for.
    ocd.tar_file_expander = functools.partial(tariterators.tar_file_expander, eof_value=None)
    get_wds_dataset = ocd.get_wds_dataset

    args = SimpleNamespace(train_data=pattern, val_data=None, train_num_samples=n, dataset_resampled=False,
                           train_data_upsampling_factors=None, seed=0, batch_size=batch, workers=workers,
                           world_size=1)
    preprocess = image_transform(224, is_train=True)
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    secs, imgs = timed(data.dataloader, max(1, workers))
    return imgs / secs / max(1, workers)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=384, help="samples per source (per measurement)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shorts", type=int, nargs="+", default=[256, 512], help="source short sides")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default=None, help="write a markdown table here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for short in a.shorts:
            pattern = write_source(Path(tmp) / f"s{short}", short, a.samples, seed=short)
            for w in a.workers:
                # Interleave the two pipelines so background load hits both alike.
                ours, theirs = run_clipl(pattern, a.samples, w, a.batch), run_open_clip(pattern, a.samples, w, a.batch)
                rows.append((short, w, ours, theirs))
                print(f"short side {short:4d}px  workers {w}:  clipl {ours:7.1f}  open_clip {theirs:7.1f} "
                      f"images/s/core  ratio {ours / theirs:.2f}x", flush=True)
    ratios = [o / t for _, _, o, t in rows]
    print(f"geometric-mean ratio {float(np.exp(np.mean(np.log(ratios)))):.2f}x")
    if a.out:
        lines = ["| source short side | workers | clipl img/s/core | open_clip img/s/core | ratio |",
                 "|---|---|---|---|---|"]
        lines += [f"| {s} px | {w} | {o:.0f} | {t:.0f} | {o / t:.2f}x |" for s, w, o, t in rows]
        lines.append(f"\nGeometric-mean ratio: {float(np.exp(np.mean(np.log(ratios)))):.2f}x; "
                     f"{a.samples} samples per measurement, batch {a.batch}, {platform.processor() or platform.machine()}, "
                     f"torch {torch.__version__}.")
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
