"""Prompt templates and class names: OpenAI's ImageNet sets ship as data files in eval/assets/.

A template is a string with one "{}" where the class name goes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from clipl.registry import Registry, did_you_mean

ASSETS = Path(__file__).parent / "assets"

_TEMPLATE_SETS: Registry[Callable[[], list[str]]] = Registry("template set", error=ValueError)


def register_templates(name: str) -> Callable:
    """Decorator registering a zero-argument function returning a builtin template set."""
    return _TEMPLATE_SETS.decorator(name)


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file; a clear error when missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ValueError(f"{what} file {p} has no entries")
    return lines


def _checked(templates: list[str], source: str) -> list[str]:
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"every template in {source} needs exactly one '{{}}' for the class name; bad: {bad[:3]}")
    return templates


@register_templates("openai")
@lru_cache(maxsize=None)
def _openai() -> list[str]:
    # The 80 templates of OpenAI's ImageNet zero-shot notebook.
    return read_lines(ASSETS / "openai_imagenet_templates.txt", "templates")


@register_templates("openai7")
@lru_cache(maxsize=None)
def _openai7() -> list[str]:
    # The 7-template subset OpenAI found to work as well as the 80 on ImageNet.
    return read_lines(ASSETS / "openai_imagenet_templates7.txt", "templates")


@register_templates("plain")
def _plain() -> list[str]:
    return ["{}"]


@register_templates("photo")
def _photo() -> list[str]:
    return ["a photo of a {}."]


def list_template_sets() -> list[str]:
    """Names of the builtin template sets (plus "shapes", resolved from the shapes data set)."""
    return sorted([*_TEMPLATE_SETS, "shapes"])


def _json_templates(spec: str, dataset: Optional[str]) -> list[str]:
    """clip_benchmark's templates JSON ({dataset: [templates]}) or a JSON list; "FILE.json:KEY" picks a key."""
    path, _, key = spec.partition(".json:")
    path = path if path.endswith(".json") else path + ".json"
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, list):
        return _checked([str(t).replace("{c}", "{}") for t in data], path)
    key = key or dataset
    if key not in data:
        hint = did_you_mean(key, data, cutoff=0.6)
        raise ValueError(f"templates {path} has no entry {key!r}.{hint} Name one as {path}:KEY "
                         f"({len(data)} entries, e.g. {', '.join(list(data)[:5])})")
    # clip_benchmark writes "{c}" where the class name goes; clipl's templates use "{}".
    return _checked([str(t).replace("{c}", "{}") for t in data[key]], f"{path}:{key}")


def load_templates(spec: str, dataset_templates: Optional[list[str]] = None, dataset: Optional[str] = None) -> list[str]:
    """Templates named by ``spec``: a builtin set, "shapes" (the data set's own), a text file (one per
    line), or clip_benchmark's templates JSON ("FILE.json" picks the entry named ``dataset``,
    "FILE.json:KEY" the entry KEY).

    ``dataset_templates`` are the data set's own templates (e.g. the shapes captions' style).
    """
    if spec == "shapes":
        if not dataset_templates:
            from clipl.data.shapes_render import PROMPT_TEMPLATES  # the captions' style; no generation

            dataset_templates = list(PROMPT_TEMPLATES)
        return _checked(list(dataset_templates), "the shapes data set")
    if spec in _TEMPLATE_SETS:
        return list(_TEMPLATE_SETS.get(spec)())
    if spec.endswith(".json") or ".json:" in spec:
        return _json_templates(spec, dataset)
    if Path(spec).is_file():
        return _checked(read_lines(spec, "templates"), spec)
    hint = did_you_mean(spec, list_template_sets(), n=2, cutoff=0.6)
    raise ValueError(f"templates {spec!r} is neither a builtin set ({', '.join(list_template_sets())}) nor a file.{hint}")


@lru_cache(maxsize=None)
def imagenet_classnames() -> list[str]:
    """OpenAI's 1000 cleaned ImageNet class names, in label order."""
    return read_lines(ASSETS / "imagenet_classnames.txt", "class names")


def load_classnames(path: str | Path) -> list[str]:
    """Class names from a file, one per line in label order."""
    return read_lines(path, "class names")
