"""Fixtures for the data tests: tiny JPEG shards, a bad-sample shard, a stand-in tokenizer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipl.data.shapes import write_tar


def stand_in_tokenizer(texts, context_length):
    """Deterministic (N, context_length) LongTensor: word lengths, padded (the real BPE lives in clipl.tokenizer)."""
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [len(w) + 1 for w in t.split()][:context_length]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def jpeg(side=24, seed=0, quality=85) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_shards(folder: Path, sizes: list[int], prefix: str = "s", sizes_json: bool = True) -> str:
    """Shards {prefix}-000..; sample keys '{prefix}{shard}_{i}'; returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    img = jpeg()
    for s, n in enumerate(sizes):
        samples = [(f"{prefix}{s:03d}_{i:04d}", {"jpg": img, "txt": f"caption {s} {i}".encode()}) for i in range(n)]
        write_tar(folder / f"{prefix}-{s:03d}.tar", samples)
    if sizes_json:
        (folder / "sizes.json").write_text(json.dumps({f"{prefix}-{s:03d}.tar": n for s, n in enumerate(sizes)}))
    return str(folder / f"{prefix}-{{000..{len(sizes) - 1:03d}}}.tar")
