"""`clipl data inspect`: read a whole source the way training would and report what is in it."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional

import numpy as np

from clipl.data.config import DataConfig
from clipl.data.skip import BadSample, SkipCounter
from clipl.data.sources import make_sources
from clipl.data.transforms import decode_image

_CHECK_SIZE = 32
"""Output side used while validating images: small, so draft-mode JPEG decoding does little work."""


def inspect_source(source: str, cfg: Optional[DataConfig] = None, limit: Optional[int] = None) -> dict:
    """Count shards, good samples and skipped samples (by reason); caption length stats in words.

    Every image is fully decoded (that is the only way to find truncated files).
    """
    cfg = dataclasses.replace(cfg or DataConfig(), max_skip_rate=1.0)
    counter = SkipCounter(max_skip_rate=1.0)
    lengths: list[int] = []
    sources = make_sources(source, cfg, "train", "source")
    n_shards = 0
    for src in sources:
        for shard in src.shards:
            n_shards += 1
            for key, members in src.iter_shard(shard, counter):
                if limit is not None and counter.good >= limit:
                    break
                rng = np.random.default_rng(zlib.crc32(key.encode()))
                try:
                    image, caption = src.extract(members, rng)
                    decode_image(image, _CHECK_SIZE, False, None, cfg.max_image_pixels, True)
                except BadSample as e:
                    counter.skip(e.reason)
                    continue
                counter.ok()
                lengths.append(len(caption.split()))
    report = {"source": source, "shards": n_shards, "samples": counter.good,
              "skipped": dict(sorted(counter.total.items()))}
    if lengths:
        a = np.asarray(lengths)
        report["caption_words"] = {"min": int(a.min()), "median": float(np.median(a)), "mean": round(float(a.mean()), 2),
                                   "p95": float(np.percentile(a, 95)), "max": int(a.max())}
    return report


def format_report(r: dict) -> str:
    """Human-readable form of an inspect_source report."""
    lines = [f"source:  {r['source']}", f"shards:  {r['shards']}", f"samples: {r['samples']} good"]
    total_bad = sum(r["skipped"].values())
    lines.append(f"skipped: {total_bad}" + ("" if not total_bad else " (" + ", ".join(
        f"{k}: {v}" for k, v in r["skipped"].items()) + ")"))
    if "caption_words" in r:
        c = r["caption_words"]
        lines.append(f"caption words: min {c['min']}, median {c['median']:g}, mean {c['mean']:g}, "
                     f"p95 {c['p95']:g}, max {c['max']}")
    return "\n".join(lines)
