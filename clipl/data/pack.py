"""`clipl data pack`: a folder of images with captions -> WebDataset shards with per-shard stats.

Inputs: a table (.csv/.tsv/.parquet) with an image-path column and a caption column, or a folder of
``name.jpg`` + ``name.txt`` pairs (searched recursively). Output, in img2dataset's layout so every
WebDataset tool reads it: ``{00000..N}.tar`` holding ``{key}.jpg|png|webp`` (the original bytes, no
re-encoding), ``{key}.txt`` (the caption) and ``{key}.json`` (key, caption, source path, width,
height), plus ``{shard}_stats.json`` (``count``, ``successes``, ``failed`` by reason) beside each
shard, which clipl's loader reads as the epoch size, and ``stats.json`` for the whole set.

Every image is opened (header and full decode) before it is packed, so what training later skips is
known now: unusable pairs are left out and counted under clipl's skip reasons (clipl.data.skip).
Samples are shuffled (seeded) across shards, so a folder sorted by class does not give one-class shards.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from clipl.data.shapes import write_tar
from clipl.data.table import is_table, read_table

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


@dataclass
class PackStats:
    """What `pack` wrote."""

    out_dir: str
    shards: list[str] = field(default_factory=list)
    samples: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def pattern(self) -> str:
        """The shard pattern for `data.train` (the folder itself works too)."""
        return str(Path(self.out_dir) / f"{{00000..{len(self.shards) - 1:05d}}}.tar")


def pairs_from_folder(folder: Path) -> Iterator[tuple[str, Optional[str]]]:
    """(image path, caption or None) for every image under ``folder`` with a same-named .txt."""
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            txt = path.with_suffix(".txt")
            yield str(path), (txt.read_text(encoding="utf-8", errors="strict") if txt.is_file() else None)


def pairs_from_table(path: Path, img_column: str, caption_column: str,
                     separator: Optional[str]) -> Iterator[tuple[str, Optional[str]]]:
    paths, captions = read_table(str(path), img_column, caption_column, separator, field="clipl data pack")
    for p, c in zip(paths, captions):
        full = p if os.path.isabs(p) else str(path.parent / p)
        yield full, c


def _check_pair(path: str, cap: Optional[str]) -> tuple[Optional[str], Optional[dict]]:
    """(skip reason, None) or (None, {ext, bytes, width, height, caption})."""
    from PIL import Image, UnidentifiedImageError

    if cap is None:
        return "missing_caption", None
    if not str(cap).strip():
        return "empty_caption", None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return "missing_file", None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "").lower()
            im.load()  # full decode: a truncated file fails here, not in a training worker
            width, height = im.size
    except UnidentifiedImageError:
        return "not_an_image", None
    except (OSError, ValueError, Image.DecompressionBombError):
        return "corrupt_image", None
    ext = {"jpeg": "jpg", "png": "png", "webp": "webp"}.get(fmt)
    if ext is None:  # e.g. a GIF or BMP: re-encode losslessly as PNG so the loader can read it
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
        data, ext = buf.getvalue(), "png"
    return None, {"ext": ext, "bytes": data, "width": width, "height": height, "caption": str(cap).strip()}


def pack(source: str | Path, out_dir: str | Path, samples_per_shard: int = 1000, img_column: str = "filepath",
         caption_column: str = "title", separator: Optional[str] = None, seed: int = 0) -> PackStats:
    """Pack ``source`` (a table or a folder of image + .txt pairs) into shards in ``out_dir``."""
    source, out = Path(source).expanduser(), Path(out_dir).expanduser()
    if samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if is_table(str(source)):
        pairs = list(pairs_from_table(source, img_column, caption_column, separator))
    elif source.is_dir():
        pairs = list(pairs_from_folder(source))
    else:
        raise FileNotFoundError(f"{source}: neither a .csv/.tsv/.parquet table nor a folder of images")
    if not pairs:
        raise ValueError(f"{source}: no images found (.jpg/.jpeg/.png/.webp, each with a same-named .txt caption)")
    if out.exists() and any(out.glob("*.tar")):
        raise FileExistsError(f"{out} already holds .tar shards; pack never overwrites: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(pairs))
    stats = PackStats(str(out))
    failed: dict[str, int] = {}
    shard, buffer, shard_failed, seen = 0, [], {}, 0

    def flush() -> None:
        nonlocal shard, buffer, shard_failed, seen
        name = f"{shard:05d}"
        tmp = out / f".{name}.tar.tmp"
        write_tar(tmp, buffer)
        os.replace(tmp, out / f"{name}.tar")  # a half-written shard never carries a shard's name
        (out / f"{name}_stats.json").write_text(json.dumps(
            {"count": seen, "successes": len(buffer), "failed": dict(shard_failed)}, indent=1) + "\n")
        stats.shards.append(f"{name}.tar")
        stats.samples += len(buffer)
        shard, buffer, shard_failed, seen = shard + 1, [], {}, 0

    for i in order:
        path, cap = pairs[int(i)]
        seen += 1
        reason, sample = _check_pair(path, cap)
        if reason is not None:
            failed[reason] = failed.get(reason, 0) + 1
            shard_failed[reason] = shard_failed.get(reason, 0) + 1
            continue
        key = f"{stats.samples + len(buffer):09d}"
        meta = {"key": key, "caption": sample["caption"], "source": path,
                "width": sample["width"], "height": sample["height"]}
        buffer.append((key, {sample["ext"]: sample["bytes"], "txt": sample["caption"].encode("utf-8"),
                             "json": json.dumps(meta).encode("utf-8")}))
        if len(buffer) == samples_per_shard:
            flush()
    if buffer:
        flush()
    if not stats.shards:
        raise ValueError(f"{source}: none of the {len(pairs)} images could be packed ({failed})")
    stats.failed, stats.seconds = failed, time.perf_counter() - t0
    (out / "stats.json").write_text(json.dumps(
        {"source": str(source), "shards": len(stats.shards), "samples": stats.samples, "failed": failed,
         "samples_per_shard": samples_per_shard, "seconds": round(stats.seconds, 2)}, indent=1) + "\n")
    return stats
