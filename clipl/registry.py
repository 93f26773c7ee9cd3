"""One registry class for every name -> thing table of clipl, and the one "did you mean" helper.

Tower architectures, model presets, objectives, strategies, prompt-template sets, eval-spec schemes,
activations and learning-rate schedules are all :class:`Registry` instances, so registering, looking
up, listing and the error for an unknown name (with close matches) behave the same everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import typing
from typing import Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar

V = TypeVar("V")


def close_matches(name: object, candidates: Iterable[str], n: int = 3, cutoff: float = 0.4) -> list[str]:
    """Up to ``n`` of ``candidates`` that look like ``name`` (difflib ratio >= ``cutoff``), best first."""
    return difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=cutoff)


def did_you_mean(name: object, candidates: Iterable[str], n: int = 3, cutoff: float = 0.4, joiner: str = ", ") -> str:
    """" Did you mean 'a', 'b'?" for the close matches of ``name``, or "" when there are none."""
    close = close_matches(name, candidates, n, cutoff)
    return f" Did you mean {joiner.join(repr(c) for c in close)}?" if close else ""


def one_of_message(field: str, value: object, choices: Iterable[object]) -> str:
    """"field='x' is not one of 'a', 'b'. Did you mean 'a'?": the one wording of a value outside its choices."""
    choices = list(choices)
    close = did_you_mean(value, [c for c in choices if isinstance(c, str)])
    return f"{field}={value!r} is not one of {', '.join(map(repr, choices))}.{close}"


def check_one_of(field: str, value: object, choices: Iterable[object]) -> None:
    """ValueError naming ``field``, the close matches and every choice unless ``value`` is one of ``choices``
    (the ``__post_init__`` check of an enum-like field whose choices come from a registry or a table)."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(one_of_message(field, value, choices))


@functools.lru_cache(maxsize=None)
def _literal_fields(cls: type) -> tuple[tuple[str, tuple], ...]:
    """(field name, choices) of every ``Literal[...]`` (or ``Optional[Literal[...]]``) field of dataclass ``cls``."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        if literals and name in {f.name for f in dataclasses.fields(cls)}:
            out.append((name, tuple(typing.get_args(literals[0])) + ((None,) if type(None) in args else ())))
    return tuple(out)


def check_literals(obj: Any, section: str) -> None:
    """The ``__post_init__`` check of every ``Literal`` field of dataclass ``obj`` (fields of section
    ``section``, e.g. "eval"): a dataclass does not enforce its annotations, and a recipe builds configs
    in Python, where OmegaConf's own check of the command line does not reach."""
    for name, choices in _literal_fields(type(obj)):
        check_one_of(f"{section}.{name}", getattr(obj, name), choices)


class Registry(Generic[V]):
    """Names -> values, with the errors a user can act on.

    ``kind`` names the table in messages ("tower architecture", "optim.schedule"); ``error`` is the
    exception raised for an unknown name; ``builtins`` are modules imported on the first look-up
    (their import registers the built-in entries: lazily, so ``import clipl`` stays cheap).
    """

    def __init__(self, kind: str, error: type[Exception] = KeyError, builtins: tuple[str, ...] = ()):
        self.kind, self.error = kind, error
        self._entries: dict[str, V] = {}
        self._builtins = builtins

    def _load(self) -> None:
        builtins, self._builtins = self._builtins, ()
        for module in builtins:
            importlib.import_module(module)

    def register(self, name: str, value: V, same: Optional[Callable[[V, V], bool]] = None) -> V:
        """Add ``name``; a second registration raises ValueError unless ``same(old, new)`` says it is
        the same thing again (a recipe file executed twice defines new but identical classes)."""
        if name in self._entries and not (same is not None and same(self._entries[name], value)):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = value
        return value

    def decorator(self, name: str) -> Callable[[V], V]:
        """``@registry.decorator(name)``: register the decorated function or class under ``name``."""
        return lambda value: self.register(name, value)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """Names in registration order."""
        self._load()
        return iter(list(self._entries))

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def suggest(self, name: object, n: int = 3, cutoff: float = 0.4) -> list[str]:
        """Registered names close to ``name``, best first."""
        return close_matches(name, self.names(), n, cutoff)

    def unknown(self, name: object, field: Optional[str] = None) -> Exception:
        """The error for an unknown ``name`` (given as config ``field``): close matches, every known name."""
        hint, known = did_you_mean(name, self.names()), ", ".join(self.names())
        what = f"{field}={name!r} is not a known {self.kind}" if field else f"unknown {self.kind} {name!r}"
        return self.error(f"{what}.{hint} Known: {known}")

    def get(self, name: object, field: Optional[str] = None) -> V:
        """The value registered as ``name``; ``self.error`` naming ``field`` and close matches otherwise."""
        if name not in self:
            raise self.unknown(name, field)
        return self._entries[name]  # type: ignore[index]

    __getitem__ = get

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a throw-away entry clean up with this)."""
        del self._entries[name]
