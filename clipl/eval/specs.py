"""Dataset specs -> indexed evaluation sets, per task.

A spec is "shapes" / "shapes:<split>" (the built-in set), an ImageFolder directory, or WebDataset
shards (brace pattern, .tar, or a directory of .tar); "name=<spec>" names the set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from clipl.data.wds_format import Members
from clipl.eval.datasets import EvalSet, clip_benchmark_split, scan_image_folder, scan_shards
from clipl.registry import Registry


def shapes_dataset(cfg: Any = None):
    """The built-in shapes set for ``cfg`` (a ShapesConfig; None: its defaults), generated on first use."""
    from clipl.data.shapes import ensure_shapes

    return ensure_shapes(cfg)


def _split_name(spec: str) -> tuple[Optional[str], str]:
    name, eq, rest = spec.partition("=")
    if eq and name and "/" not in name and "{" not in name:
        return name, rest
    return None, spec


def _shapes_split(ds, split: str, task: str) -> EvalSet:
    patterns = {"train": ds.train, "val": ds.val, **ds.eval_splits}
    if split not in patterns:
        raise ValueError(f"{task}: unknown shapes split {split!r}; splits: {', '.join(patterns)}")
    s = scan_shards(patterns[split], name=f"shapes_{split}")
    s.classnames = ds.classnames.get(split)
    s.templates = list(ds.templates)
    return s


def _local(spec: str, name: Optional[str], members: Optional[Members]) -> EvalSet:
    p = Path(spec)
    root, _, split = spec.rpartition(":")
    if root and "/" not in split and Path(root).is_dir():  # "DIR:train": a clip_benchmark split
        p, spec = Path(root), root
    else:
        split = "test"
    if p.is_dir() and not any(p.glob("*.tar")):
        shards = clip_benchmark_split(p, split)
        if shards is not None:
            return scan_shards(str(p / split), name or p.name, paths=shards, members=members)
        return scan_image_folder(p, name)
    return scan_shards(spec, name, members=members)


# Spec schemes ("shapes:colour"); a spec whose prefix is no scheme is a local path.
_SCHEMES: Registry[Callable[[str, str, Any], list[EvalSet]]] = Registry("eval spec scheme", error=ValueError)


def _scheme(name: str):
    return _SCHEMES.decorator(name)


@_scheme("shapes")
def _shapes(arg: str, task: str, shapes_cfg: Any) -> list[EvalSet]:
    ds = shapes_dataset(shapes_cfg)
    if arg:
        return [_shapes_split(ds, arg, task)]
    if task == "retrieval":
        s = _shapes_split(ds, "val", task)
        s.name = "shapes"
        return [s]
    return [_shapes_split(ds, split, task) for split in ds.eval_splits]


def resolve(spec: str, task: str, shapes_cfg: Any = None, members: Optional[Members] = None) -> list[EvalSet]:
    """The evaluation sets of one spec for ``task`` ("zeroshot", "retrieval" or "linear_probe"); ``members``
    reads WebDataset shards with the run's ``data.image_key``/``data.caption_key`` (the shapes set has
    its own fixed layout)."""
    name, body = _split_name(spec)
    scheme, _, arg = body.partition(":")
    if scheme in _SCHEMES:
        sets = _SCHEMES.get(scheme)(arg, task, shapes_cfg)
        if name:
            for s in sets:
                s.name = name if len(sets) == 1 else f"{name}_{s.name}"
    else:
        sets = [_local(body, name, members)]
    for s in sets:
        _check(s, task, spec)
    return sets


def _check(s: EvalSet, task: str, spec: str) -> None:
    if task == "retrieval":
        bad = sum(1 for x in s.samples if not x.captions)
        if bad:
            raise ValueError(f"retrieval set {spec!r}: {bad} samples have no captions (.json 'captions' or the "
                             "data.caption_key member, .txt by default)")
        return
    labels = [x.label for x in s.samples]
    if min(labels) < 0:
        raise ValueError(f"{task} set {spec!r}: samples without a label (WebDataset eval shards need a .cls per sample)")
    if task == "zeroshot":
        if not s.classnames:
            raise ValueError(f"zero-shot set {spec!r} has no class names (put classnames.txt beside the shards)")
        if max(labels) >= len(s.classnames):
            raise ValueError(f"zero-shot set {spec!r}: label {max(labels)} but only {len(s.classnames)} class names")


@dataclass
class ProbeSet:
    """A linear-probe task: training and test samples (indices into their EvalSets)."""

    name: str
    train: EvalSet
    train_indices: list[int]
    test: EvalSet
    test_indices: list[int]
    num_classes: int


def resolve_probe(spec: str, shapes_cfg: Any = None, train_fraction: float = 0.5, seed: int = 0,
                  members: Optional[Members] = None) -> list[ProbeSet]:
    """Linear-probe sets: a directory with train/ and test/ (or val/) used as given, else a seeded split."""
    name, body = _split_name(spec)
    p = Path(body)
    test_dir = next((p / d for d in ("test", "val") if (p / d).is_dir()), None) if p.is_dir() else None
    if test_dir is not None and (p / "train").is_dir():
        train = resolve(str(p / "train"), "linear_probe", members=members)
        test = resolve(str(test_dir), "linear_probe", members=members)
        t, s = train[0], test[0]
        n_cls = max(len(t.classnames or []), len(s.classnames or []), 1 + max(x.label for x in t.samples + s.samples))
        return [ProbeSet(name or p.name, t, list(range(len(t.samples))), s, list(range(len(s.samples))), n_cls)]
    out = []
    for s in resolve(spec, "linear_probe", shapes_cfg, members):
        n = len(s.samples)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        n_train = min(n - 1, max(1, round(train_fraction * n)))
        n_cls = max(len(s.classnames or []), 1 + max(x.label for x in s.samples))
        out.append(ProbeSet(s.name, s, sorted(perm[:n_train]), s, sorted(perm[n_train:]), n_cls))
    return out
