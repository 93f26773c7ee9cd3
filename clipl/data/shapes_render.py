"""Rendering and captioning of one captioned-shapes scene (the vocabulary lives here).

Every scene is a pure function of its numpy Generator, so a (seed, split, index) triple always gives
the same pixels and the same caption.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# Chosen to stay distinct at 64 px under any rotation (no square/diamond or circle/hexagon pairs).
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart", "crescent", "ring"]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
    "pink": (250, 120, 190),
    "cyan": (30, 210, 220),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZES = {"small": (0.11, 0.14), "medium": (0.17, 0.21), "large": (0.25, 0.30)}  # radius / image side
BACKGROUNDS = {  # muted, so every object colour keeps its contrast
    "grey": (128, 128, 128),
    "beige": (190, 175, 150),
    "dark grey": (70, 70, 75),
    "light grey": (175, 175, 180),
    "brown": (110, 85, 65),
    "slate": (90, 105, 120),
}
ROWS = ["top", "middle", "bottom"]
COLS = ["left", "centre", "right"]


def position_phrase(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "in the centre"
    if row == 1:
        return f"on the {COLS[col]}"
    if col == 1:
        return f"at the {ROWS[row]}"
    return f"in the {ROWS[row]} {COLS[col]} corner"


def _star(n_points: int, inner: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * n_points):
        r = 1.0 if i % 2 == 0 else inner
        a = math.pi * i / n_points - math.pi / 2
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


_OUTLINES = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)],
    "star": _star(5, 0.42),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "heart": [(math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
               - math.cos(4 * t)) / 16) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)],
}


def _mask(shape: str, cx: float, cy: float, r: float, angle: float, side: int, ss: int = 3):
    """Anti-aliased coverage (float32 in [0, 1]) of one object over its bounding box, drawn at `ss`x.

    Returns (mask, x0, y0): the mask covers image[y0:y0+h, x0:x0+w]; working on the box only keeps
    the supersampled drawing cheap.
    """
    x0, y0 = max(0, int(cx - r) - 2), max(0, int(cy - r) - 2)
    x1, y1 = min(side, int(cx + r) + 3), min(side, int(cy + r) + 3)
    m = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    d = ImageDraw.Draw(m)
    cx, cy, r = (cx - x0) * ss, (cy - y0) * ss, r * ss
    ca, sa = math.cos(angle), math.sin(angle)

    def tf(pts):
        return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]

    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * 0.55
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.45 * r * ca, cy + 0.45 * r * sa
        d.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=0)
    else:
        d.polygon(tf(_OUTLINES[shape]), fill=255)
    m = m.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    return np.asarray(m, dtype=np.float32) / np.float32(255.0), x0, y0


def _background(rng: np.random.Generator, side: int) -> tuple[np.ndarray, str]:
    name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    base = np.array(BACKGROUNDS[name], np.float32) + rng.uniform(-12, 12, 3)
    # A random linear gradient plus pixel noise, so the background is never a flat colour.
    gx, gy = rng.uniform(-25, 25, 2)
    lin = np.linspace(-0.5, 0.5, side, dtype=np.float32)
    grad = gx * lin[None, :] + gy * lin[:, None]
    img = base[None, None, :] + grad[:, :, None] + np.zeros((side, side, 3), np.float32)
    return img, name


def render_scene(rng: np.random.Generator, side: int, n_objects: int):
    """Draw one scene; returns (HxWx3 uint8 image, list of object attribute dicts, background name)."""
    img, bg = _background(rng, side)
    cells = rng.permutation(9)[:n_objects]
    objects = []
    for cell in cells:
        row, col = divmod(int(cell), 3)
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        sizes = list(SIZES) if n_objects == 1 else ["small", "medium"]
        size = sizes[rng.integers(len(sizes))]
        r = rng.uniform(*SIZES[size]) * side
        # Cell centre plus jitter, clamped so the object stays fully inside the image.
        cx = (col + 0.5) / 3 * side + rng.uniform(-0.06, 0.06) * side
        cy = (row + 0.5) / 3 * side + rng.uniform(-0.06, 0.06) * side
        cx, cy = float(np.clip(cx, r + 1, side - r - 1)), float(np.clip(cy, r + 1, side - r - 1))
        angle = float(rng.uniform(0, 2 * math.pi))
        rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.uniform(-15, 15, 3), 0, 255)
        m, x0, y0 = _mask(shape, cx, cy, r, angle, side)
        patch = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        patch += m[:, :, None] * (rgb.astype(np.float32)[None, None, :] - patch)
        objects.append(dict(shape=shape, colour=colour, size=size, row=row, col=col,
                            x=round(cx / side, 4), y=round(cy / side, 4), angle=round(angle, 4)))
    # One noise field over background and objects alike. Uniform uint8 draws are ~3x cheaper than
    # normal ones; a uniform over 0..255 has sd 73.9, rescaled here to sd 3..12.
    u = rng.integers(0, 256, (side, side, 3), dtype=np.uint8).astype(np.float32)
    noise = (u - np.float32(127.5)) * np.float32(rng.uniform(3, 12) / 73.9)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return img, objects, bg


# ----------------------------------------------------------------------------------- captions
SINGLE_TEMPLATES = [
    "a {desc} {pos}",
    "a photo of a {desc}",
    "a photo of a {desc} {pos}",
    "an image of a {desc}",
    "a picture of a {desc} {pos}",
    "there is a {desc} {pos}",
    "a drawing of a {desc} on a {bg} background",
    "a {desc} on a {bg} background",
    "a {colour} shape: a {size} {shape} {pos}",
    "{pos_cap}, a {desc}",
    "a single {desc}",
    "one {desc} {pos}",
    "a {shape} that is {colour}, {pos}",
    "a rendering of a {desc}",
    "a {size} {colour} {shape}",
    "a {shape}",
]
PAIR_TEMPLATES = [
    "a {a} {rel} a {b}",
    "a photo of a {a} {rel} a {b}",
    "a {a} and a {b}",
    "two shapes: a {a} and a {b}",
    "an image of a {a} {rel} a {b}",
    "a picture with a {a} and a {b} on a {bg} background",
    "a {b} and a {a}",
    "there is a {a} {rel} a {b}",
]
PROMPT_TEMPLATES = [
    "a photo of a {}.",
    "a {}.",
    "an image of a {}.",
    "a picture of a {}.",
    "a drawing of a {} on a plain background.",
    "a rendering of a {}.",
]


def _describe(o: dict, rng: np.random.Generator, colour_prob: float) -> str:
    """Shape always named; colour with probability ``colour_prob``, size sometimes."""
    words = []
    if rng.random() < 0.4:
        words.append(o["size"])
    if rng.random() < colour_prob:
        words.append(o["colour"])
    return " ".join(words + [o["shape"]])


def _relation(a: dict, b: dict) -> str:
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def caption(objects: list[dict], bg: str, rng: np.random.Generator, colour_prob: float = 0.85) -> str:
    """One natural-language caption of a scene, drawn from the templates above.

    ``colour_prob`` only changes which words a description keeps, never how many numbers are drawn,
    so the images and all other caption choices stay the same for any value.
    """
    if len(objects) == 1:
        o = objects[0]
        pos = position_phrase(o["row"], o["col"])
        t = SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))]
        return t.format(desc=_describe(o, rng, colour_prob), pos=pos, pos_cap=pos[0].upper() + pos[1:], bg=bg,
                        colour=o["colour"], size=o["size"], shape=o["shape"])
    a, b = objects[0], objects[1]
    t = PAIR_TEMPLATES[rng.integers(len(PAIR_TEMPLATES))]
    rel = _relation(a, b) if rng.random() < 0.7 else "next to"
    return t.format(a=_describe(a, rng, colour_prob), b=_describe(b, rng, colour_prob), rel=rel, bg=bg)
