"""Evaluation data: ImageFolder directories, labelled/captioned WebDataset shards, the shapes splits.

Every set is first indexed into a list of samples (a file path, or byte ranges inside a .tar), so
it can be sharded exactly: rank r of W takes samples r, r + W, ... padded to ceil(N / W) with
masked repeats. Every rank then runs the same number of forwards (ZeRO-3 gathers parameters
collectively) and each real sample is counted exactly once.
"""

from __future__ import annotations

import io
import math
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from PIL import Image

from clipl.data.skip import BadSample
from clipl.data.wds_format import LABEL_EXTENSION, Members, split_member
from clipl.data.webdataset import brace_expand
from clipl.eval.prompts import read_lines

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Sample:
    """One evaluation sample: where its image is, its label and captions (if any)."""

    image: Any
    """A file path, or (tar path, byte offset, size)."""
    label: int = -1
    captions: list[str] = field(default_factory=list)


@dataclass
class EvalSet:
    """An indexed evaluation set."""

    name: str
    samples: list[Sample]
    classnames: Optional[list[str]] = None
    templates: Optional[list[str]] = None
    """The set's own prompt templates (shapes, or templates.txt beside the data), if any."""


def scan_image_folder(root: str | Path, name: Optional[str] = None) -> EvalSet:
    """ImageFolder layout: one sub-folder per class (sorted; underscores read as spaces).

    A ``classnames.txt`` beside the folders (one name per folder, in sorted folder order) wins.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder directory not found: {root}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders (ImageFolder layout: {root}/<class name>/<image>)")
    samples = []
    for label, d in enumerate(class_dirs):
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        samples += [Sample(image=str(f), label=label) for f in files]
    if not samples:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) under the class folders of {root}")
    templates = read_lines(root / "templates.txt", "templates") if (root / "templates.txt").is_file() else None
    names = [d.name.replace("_", " ") for d in class_dirs]
    if (root / "classnames.txt").is_file():  # e.g. ImageNet's WordNet-id folders, in sorted order
        names = read_lines(root / "classnames.txt", "class names")
        if len(names) != len(class_dirs):
            raise ValueError(f"{root}/classnames.txt has {len(names)} names for {len(class_dirs)} class folders")
    return EvalSet(name or root.name, samples, names, templates)


def expand_shards(spec: str) -> list[Path]:
    """Shard files of a brace pattern ("a/{000..009}.tar"), a single .tar, or a directory of .tar."""

    p = Path(spec)
    if p.is_dir():
        paths = sorted(p.glob("*.tar"))
        if not paths:
            raise FileNotFoundError(f"no .tar shards in directory {p}")
        return paths
    paths = [Path(s) for s in brace_expand(spec)]
    missing = [str(s) for s in paths if not s.is_file()]
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise FileNotFoundError(f"eval shard(s) not found: {', '.join(missing[:3])}{more}")
    return paths


# clip_benchmark's WebDataset layout (clip_benchmark.datasets.builder.build_wds_dataset):
#   DIR/{test,train}/nshards.txt, DIR/{split}/0.tar ...; DIR/classnames.txt,
#   DIR/zeroshot_classification_templates.txt, DIR/dataset_type.txt ("retrieval": .txt holds one caption per line).
CB_TEMPLATES = "zeroshot_classification_templates.txt"
CB_TYPE = "dataset_type.txt"


def clip_benchmark_split(root: Path, split: str = "test") -> Optional[list[Path]]:
    """The shards of ``split`` when ``root`` is a clip_benchmark WebDataset folder, else None."""
    folder = root / split
    if not (folder / "nshards.txt").is_file():
        return None
    try:
        n = int((folder / "nshards.txt").read_text().strip())
    except ValueError as e:
        raise ValueError(f"{folder / 'nshards.txt'} must hold the number of shards") from e
    paths = [folder / f"{i}.tar" for i in range(n)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}/nshards.txt says {n} shards; missing: {', '.join(missing[:3])}")
    return paths


def _metadata_folder(folder: Path) -> Path:
    """Where a shard folder's class names / templates live: beside the shards, or clip_benchmark's root above."""
    parent = folder.parent
    if not any((folder / f).is_file() for f in ("classnames.txt", "templates.txt", CB_TEMPLATES)) and \
            any((parent / f).is_file() for f in ("classnames.txt", CB_TEMPLATES, CB_TYPE)):
        return parent
    return folder


def _index_tar(path: Path, members: Members, caption_lines: bool = False) -> list[Sample]:
    """The samples of one shard, grouped and read by clipl.data.wds_format's member rules."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.isfile():
                key, ext = split_member(m.name)
                groups.setdefault(key, {})[ext] = m
        # captions and labels are read now; images lazily, by byte range
        texts = {key: {e: tar.extractfile(m).read() for e, m in g.items() if members.read_now(e)}
                 for key, g in groups.items()}
    samples = []
    for key, g in groups.items():
        img = members.image_ext(g)
        if img is None:
            continue  # not an image sample (e.g. a stray metadata file)
        t = texts[key]
        try:
            label = int(t[LABEL_EXTENSION].decode().strip()) if LABEL_EXTENSION in t else -1
        except ValueError as e:
            raise ValueError(f"{path}: {key}.{LABEL_EXTENSION} is not an ASCII integer label") from e
        try:
            caps = members.every_caption(t, one_per_line=caption_lines)
        except (BadSample, ValueError) as e:
            raise ValueError(f"{path}: sample {key}: cannot read its captions ({e})") from None
        samples.append(Sample(image=(str(path), g[img].offset_data, g[img].size), label=label, captions=caps))
    return samples


def scan_shards(spec: str, name: Optional[str] = None, paths: Optional[list[Path]] = None,
                members: Optional[Members] = None) -> EvalSet:
    """Index WebDataset shards (``members``: which member is the image and which the captions, from
    ``data.image_key``/``data.caption_key``; None: the defaults); `classnames.txt` and `templates.txt` (or
    clip_benchmark's `zeroshot_classification_templates.txt`) beside the first shard, or in clip_benchmark's
    dataset root above its split folder, are read."""
    paths = paths or expand_shards(spec)
    meta = _metadata_folder(paths[0].parent)
    kind = (meta / CB_TYPE).read_text().strip().lower() if (meta / CB_TYPE).is_file() else "classification"
    if kind not in ("classification", "retrieval"):
        raise ValueError(f"{meta / CB_TYPE}: dataset type {kind!r} is not supported (classification, retrieval)")
    samples = [s for p in paths for s in _index_tar(p, members or Members(), caption_lines=kind == "retrieval")]
    if not samples:
        raise ValueError(f"no image samples in the shards {spec}")
    classnames = read_lines(meta / "classnames.txt", "class names") if (meta / "classnames.txt").is_file() else None
    templates = None
    for f in ("templates.txt", CB_TEMPLATES):
        if (meta / f).is_file():
            # clip_benchmark writes "{c}" where the class name goes; clipl's templates use "{}".
            templates = [t.replace("{c}", "{}") for t in read_lines(meta / f, "templates")]
            break
    return EvalSet(name or meta.name, samples, classnames, templates)


def load_image(source: Any, size: int) -> torch.Tensor:
    """uint8 (3, size, size): resize the short side to ``size`` (bicubic), centre crop (CLIP's eval)."""
    if isinstance(source, tuple):
        path, offset, n = source
        with open(path, "rb") as f:
            f.seek(offset)
            data = io.BytesIO(f.read(n))
        img = Image.open(data)
    else:
        img = Image.open(source)
    return _eval_transform(size)(img.convert("RGB"))


@lru_cache(maxsize=8)
def _eval_transform(size: int):
    """torchvision's Resize(size, bicubic) + CenterCrop(size) on the PIL image: PIL does the resampling,
    so this is bit-for-bit the hand-written resize-and-crop clipl used before (tested)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(size),
                       v2.PILToTensor()])


def shard_indices(n: int, rank: int, world: int) -> tuple[list[int], list[bool]]:
    """Rank ``rank``'s sample indices (strided) padded to ceil(n / world), and which are real."""
    per_rank = math.ceil(n / world)
    idx = list(range(rank, n, world))
    valid = [True] * len(idx) + [False] * (per_rank - len(idx))
    return idx + [idx[0] if idx else 0] * (per_rank - len(idx)), valid


class EvalImageDataset(torch.utils.data.Dataset):
    """One rank's shard of an EvalSet as a map-style dataset of dicts.

    Items: ``image`` uint8 (3, S, S), ``label``, ``index`` (global), ``valid`` (False for padding),
    and with ``tokenize``: ``text`` (max_captions, L) and ``text_valid`` (max_captions,).
    """

    def __init__(self, eval_set: EvalSet, image_size: int, rank: int = 0, world: int = 1,
                 tokenize: Optional[Callable[[list[str]], torch.Tensor]] = None, max_captions: int = 5,
                 indices: Optional[list[int]] = None):
        self.set = eval_set
        self.image_size = image_size
        base = list(range(len(eval_set.samples))) if indices is None else list(indices)
        local, self.valid = shard_indices(len(base), rank, world)
        self.indices = [base[i] for i in local] if base else []
        self.tokenize = tokenize
        self.max_captions = max_captions

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        s = self.set.samples[index]
        try:
            image = load_image(s.image, self.image_size)
        except Exception as e:  # a broken eval image is a data error, not something to skip silently
            where = s.image if isinstance(s.image, str) else f"{s.image[0]} @ byte {s.image[1]}"
            raise ValueError(f"eval set {self.set.name!r}: cannot decode image {where}: {e}") from e
        item = {"image": image, "label": s.label, "index": index, "valid": self.valid[i]}
        if self.tokenize is not None:
            if not s.captions:
                raise ValueError(f"eval set {self.set.name!r}: sample {index} has no caption (.json captions or .txt)")
            caps = s.captions[: self.max_captions]
            tokens = self.tokenize(caps)
            pad = self.max_captions - len(caps)
            item["text"] = torch.cat([tokens, tokens[:1].repeat(pad, 1)]) if pad else tokens
            item["text_valid"] = torch.tensor([True] * len(caps) + [False] * pad)
        return item


def loader(dataset: EvalImageDataset, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """A deterministic (unshuffled) loader over one rank's shard."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                       persistent_workers=False, drop_last=False)
