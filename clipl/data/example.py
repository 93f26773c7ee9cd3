"""`clipl data example`: a small stand-in for "your own data", as plain files, to try the own-data path.

It writes what a user typically has: a folder of ``NNNNN.jpg`` + ``NNNNN.txt`` caption pairs (and the
same pairs as ``captions.csv``, the table form), and a labelled folder for evaluation in ImageFolder
layout (one sub-folder per class, here the object's colour) with ``templates.txt`` beside the class
folders. Images are the built-in shapes renderer's scenes (one object each) saved as JPEG files, so
everything downstream (packing, decoding, training, zero-shot and linear-probe evaluation) runs on
real image files, exactly as it would on a user's photos.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from clipl.data.shapes_render import COLOURS, caption, render_scene

TEMPLATES = ["a photo of a {} shape.", "a {} shape.", "a drawing of a {} object.", "something {}."]


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_example(out: str | Path, n_pairs: int = 800, n_per_class: int = 30, side: int = 64,
                  seed: int = 0) -> dict[str, Path]:
    """Write ``out/images`` (pairs), ``out/captions.csv`` and ``out/labelled/<colour>/``; returns the paths."""
    out = Path(out)
    images, labelled = out / "images", out / "labelled"
    if images.exists() or labelled.exists():
        raise FileExistsError(f"{out} already holds images/ or labelled/; choose another --out")
    images.mkdir(parents=True)
    rng = np.random.default_rng([seed, 0])
    rows = []
    for i in range(n_pairs):
        img, objects, bg = render_scene(rng, side, 1)
        name = f"{i:05d}"
        (images / f"{name}.jpg").write_bytes(_jpeg(img))
        text = caption(objects, bg, rng, colour_prob=1.0)  # people describe colours: keep them
        (images / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
        rows.append((f"images/{name}.jpg", text))
    with (out / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    # Labelled evaluation images, drawn from a different random stream than the training pairs.
    rng = np.random.default_rng([seed, 1])
    counts = {c: 0 for c in COLOURS}
    while min(counts.values()) < n_per_class:
        img, objects, _ = render_scene(rng, side, 1)
        colour = objects[0]["colour"]
        if counts[colour] >= n_per_class:
            continue
        (labelled / colour).mkdir(parents=True, exist_ok=True)
        (labelled / colour / f"{counts[colour]:04d}.jpg").write_bytes(_jpeg(img))
        counts[colour] += 1
    (labelled / "templates.txt").write_text("\n".join(TEMPLATES) + "\n", encoding="utf-8")
    return {"images": images, "table": out / "captions.csv", "labelled": labelled}
