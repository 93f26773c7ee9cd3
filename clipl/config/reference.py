"""docs/config.md, generated from the config dataclasses: every section, every field, its default and
its docstring. Regenerate after adding or changing a config field:

    python -m clipl.config.reference > docs/config.md

(tests/config/test_reference.py fails while docs/config.md differs from this output.)

Field docstrings are the string literals that follow each annotated field in the class body, read
from the source with ``ast`` (Python keeps no runtime record of them). Fields typed ``Any`` hold one of
several registered dataclasses (towers, objectives): each registered class gets its own table.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Any, Iterator

COMMAND = "python -m clipl.config.reference > docs/config.md"
"""How to regenerate docs/config.md (quoted by the staleness test)."""


def field_docs(cls: type) -> dict[str, str]:
    """{field name: docstring} of a dataclass and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _show(value: Any) -> str:
    if value is dataclasses.MISSING or value == "???":
        return "required"
    if dataclasses.is_dataclass(value):
        return f"{type(value).__name__}(...)"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _nested(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is typing.Union:
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def _variants(path: str) -> list[tuple[str, type]]:
    """The registered dataclasses an ``Any`` field can hold, as (title, class)."""
    if path == "model.image":  # the same registered towers serve both sides: listed once
        from clipl.models.registry import list_archs, tower_config_class

        return [(f"arch: {arch}", tower_config_class(arch)) for arch in list_archs()
                if _ships_with_clipl(tower_config_class(arch))]
    if path == "objective":
        from clipl.objectives.registry import list_objectives, objective_config_class

        return [(f"name: {name}", objective_config_class(name)) for name in list_objectives()
                if _ships_with_clipl(objective_config_class(name))]
    return []


def _ships_with_clipl(cls: type) -> bool:
    # A recipe loaded earlier in the process (recipes/custom.py) registers its own towers/objectives:
    # they are not clipl's fields, and their source is not importable.
    return cls.__module__.split(".")[0] == "clipl"


def section(path: str, cls: type, title: str = "") -> Iterator[str]:
    """Markdown for one dataclass at ``path``, then its nested dataclasses and variants."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    yield f"## `{path}` ({title})" if path and title else f"## `{path}`" if path else "## Top level"
    yield ""
    yield f"{_cell(inspect.cleandoc(cls.__doc__ or ''))} (`{cls.__module__}.{cls.__name__}`)"
    yield ""
    yield "| field | default | description |"
    yield "|---|---|---|"
    later: list[tuple[str, type, str]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{path}.{f.name}" if path else f.name
        doc = docs.get(f.name, "(undocumented)")
        nested, variants = _nested(hints[f.name]), _variants(key)
        if nested is not None:
            later.append((key, nested, ""))
            doc += f" See `{key}` below."
        elif variants:
            shared = "model.{image,text}" if key == "model.image" else key
            later += [(shared, klass, title) for title, klass in variants]
            doc += f" One of the {len(variants)} registered kinds below (`{shared}`)."
        elif key == "model.text":
            doc += " The same registered kinds as `model.image` (`model.{image,text}` below)."
        yield f"| `{key}` | `{_cell(_show(_default(f)))}` | {_cell(doc)} |"
    yield ""
    for key, klass, sub in later:
        yield from section(key, klass, sub)


def undocumented(cls: type | None = None, path: str = "") -> list[str]:
    """Fields (dotted paths) of the run config, towers and objectives included, with no docstring."""
    if cls is None:
        from clipl.config.schema import RunConfig

        cls = RunConfig
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        if f.init and f.name not in docs:
            out.append(f"{key} ({cls.__name__})")
        nested = _nested(hints[f.name])
        for klass in ([nested] if nested else []) + [k for _, k in _variants(key)]:
            out += undocumented(klass, "model.{image,text}" if key == "model.image" else key)
    return sorted(set(out))


def reference() -> str:
    from clipl.config.schema import RunConfig

    head = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the config dataclasses' field docstrings; do not edit. -->",
        "",
        "Every field can be set in a recipe's `config()` or on the command line as `key=value`",
        "(`lightning run RECIPE trainer.max_steps=1000 data.num_workers=4`); `clipl config RECIPE [key=value ...]`",
        "prints the resolved values. Defaults below are the dataclasses' own; a recipe sets its own values",
        "on top of them (for example the towers, which have no default).",
        "",
    ]
    return "\n".join(head + list(section("", RunConfig))).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
