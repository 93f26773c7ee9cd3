"""The import graph of clipl/ (read with ast, nothing imported): no import circle, no upward import.

The graph holds every import: module level, deferred into functions, and under ``if TYPE_CHECKING:``
(a deferred import is still a dependency, and one that closes a circle or points upward is exactly
what "configs are leaves" removed in issue #13). Importing ``a.b.c`` runs package ``a.b``'s
``__init__`` first, so that edge is in the graph too. ``callbacks/`` is installed as
``clipl.callbacks`` and is walked with the package.

LAYERS below is the allowed layering, low to high: a module may import its own layer (the circle
check still applies) or a lower one, never a higher one. Where code seems to need an upward import,
move the shared piece down (a config into its leaf ``config.py``, a helper into a leaf module) or
pass it in as an argument. There is no allow-list of exceptions.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "clipl"
# Top-level folders installed as clipl subpackages (pyproject's package-dir).
EXTRA_PACKAGES = {"clipl.callbacks": REPO / "callbacks"}

# (pattern, layer): the first pattern that matches a module name gives its layer ("x" is module x
# itself, "x.*" the modules under package x). Issue #13's plan had clipl.config at layer 4 beside
# clipl.run and clipl.paper among the leaves; reality, kept here with the reason:
# - clipl.config (composition, parsing, YAML) sits BELOW the training code: CLIPModule rebuilds its
#   RunConfig from a checkpoint's hyper_parameters (Lightning's load_from_checkpoint calls it with the
#   plain dict), so the composed RunConfig must be importable from the module; clipl.config itself
#   imports only the section leaves and the domain packages (the flow "config -> plan -> module ->
#   Trainer" of docs/architecture.md, read downward).
# - clipl.paper builds whole RunConfigs of the paper recipes (it imports clipl.config.schema and the
#   presets), so it is a recipe helper beside clipl.run, not a leaf.
# - package __init__ files that import nothing of clipl (clipl.training's, so that clipl.distributed
#   can read the leaf clipl.training.config without loading the trainer) are leaves: listing one here
#   makes this test fail if it ever starts importing its package's code.
# - the package root clipl/__init__.py imports clipl.models (``clipl.models.build_model`` after a plain
#   ``import clipl``), so it is a domain-layer module; it runs before any submodule anyway.
LAYERS: list[tuple[str, int]] = [
    # 1. leaves: no clipl import but other leaves
    ("clipl.registry", 1),
    ("clipl.ranks", 1),
    ("clipl.rng", 1),
    ("clipl.quiet", 1),
    ("clipl.tokenizer", 1),
    ("clipl.codec", 1),
    ("clipl.step_stats", 1),
    ("clipl.training", 1),  # the package __init__ only: it imports nothing
    ("clipl.config", 3),  # the composition package is not a section leaf (see 3.)
    ("*.config", 1),  # every section's config.py: clipl/models/config.py, clipl/training/config.py ...
    # 2. domain packages (may import each other, without circles)
    ("clipl", 2),
    ("clipl.models", 2), ("clipl.models.*", 2),
    ("clipl.objectives", 2), ("clipl.objectives.*", 2),
    ("clipl.data", 2), ("clipl.data.*", 2),
    ("clipl.optim", 2),
    ("clipl.flops", 2),
    ("clipl.distributed", 2), ("clipl.distributed.*", 2),
    ("clipl.eval", 2), ("clipl.eval.*", 2),
    # 3. run configuration: composition (schema), YAML (io), overrides (parse), checks (validate, reference)
    ("clipl.config.*", 3),
    # 4. training: the LightningModule and its helpers, the run loop, the callbacks
    ("clipl.module", 4),
    ("clipl.accumulation", 4),
    ("clipl.manual_step", 4),
    ("clipl.training.*", 4),
    ("clipl.callbacks", 4), ("clipl.callbacks.*", 4),
    # 5. orchestration of a run from a recipe
    ("clipl.run", 5),
    ("clipl.paper", 5),
    # 6. command lines
    ("clipl.cli", 6), ("clipl.cli.*", 6),
]


def layer_of(module: str, layers: list[tuple[str, int]] = LAYERS) -> int | None:
    for pattern, layer in layers:
        if fnmatchcase(module, pattern):
            return layer
    return None


def _modules() -> dict[str, Path]:
    mods = {}
    roots = {"clipl": PACKAGE, **EXTRA_PACKAGES}
    for prefix, root in roots.items():
        for f in root.rglob("*.py"):
            parts = [*prefix.split("."), *f.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """clipl modules imported anywhere in ``name`` (module level, functions, TYPE_CHECKING blocks),
    with the package ``__init__`` files that importing them runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
    out = set()
    for target in targets:
        while target and target not in mods:  # clipl.models.build_model -> clipl.models
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
            parent = target.rpartition(".")[0]  # importing a.b.c runs a.b's __init__ first
            while parent:
                if not name.startswith(parent + ".") and parent != name:
                    out.add(parent)
                parent = parent.rpartition(".")[0]
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _upward(graph: dict[str, set[str]], layers: list[tuple[str, int]] = LAYERS) -> list[str]:
    """Every import from a module to a module of a higher layer, as "a (layer) -> b (layer)"."""
    found = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            la, lb = layer_of(a, layers), layer_of(b, layers)
            if la is not None and lb is not None and lb > la:
                found.append(f"{a} ({la}) -> {b} ({lb})")
    return found


# --------------------------------------------------------------------------- the checks check
def test_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_upward_detector_finds_an_upward_import():
    toy = [("p.low", 1), ("p.*.config", 1), ("p.mid", 2), ("p.mid.*", 2), ("p.top", 3)]
    assert layer_of("p.mid.config", toy) == 1 and layer_of("p.mid.x", toy) == 2 and layer_of("q", toy) is None
    graph = {"p.low": set(), "p.mid": {"p.low", "p.mid.config"}, "p.mid.config": set(), "p.top": {"p.mid"}}
    assert _upward(graph, toy) == []
    graph["p.mid.config"] = {"p.mid.x"}  # a config leaf reaching into its consumer
    graph["p.mid"] = {"p.low", "p.top"}  # a deferred import would be read the same way
    assert _upward(graph, toy) == ["p.mid (2) -> p.top (3)", "p.mid.config (1) -> p.mid.x (2)"]


def test_graph_sees_deferred_and_type_checking_imports(tmp_path):
    (tmp_path / "m.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import clipl.a\n"
                                   "def f():\n    from clipl.b.c import g\n")
    mods = {"clipl.a": Path(), "clipl.b": Path(), "clipl.b.c": Path(), "clipl.m": tmp_path / "m.py"}
    assert _imports("clipl.m", tmp_path / "m.py", mods) == {"clipl.a", "clipl.b", "clipl.b.c"}


def test_graph_sees_the_package():
    graph = _graph()
    assert "clipl.models.registry" in graph["clipl.models"]
    assert "clipl.registry" in graph["clipl.models.registry"]
    assert "clipl.eval.runner" in graph["clipl.callbacks.eval_base"]  # callbacks/ is clipl.callbacks


# --------------------------------------------------------------------------- the acceptance of #13
def test_every_module_has_a_layer():
    missing = sorted(m for m in _graph() if layer_of(m) is None)
    assert not missing, f"modules without a layer: {missing}; add them to LAYERS in {Path(__file__).name}"


def test_no_import_circle():
    circles = _circles(_graph())
    if circles:
        pytest.fail(f"import circle(s) in clipl/ (deferred and TYPE_CHECKING imports included): {circles}; "
                    "break them by moving the shared piece down (a config beside its owner, a helper into a "
                    "leaf module) rather than hiding the import in a function")


def test_no_upward_import():
    upward = _upward(_graph())
    if upward:
        pytest.fail("upward import(s) (deferred ones included):\n  " + "\n  ".join(upward) +
                    "\nmove the shared piece down or pass it in as an argument (layers: LAYERS in "
                    f"{Path(__file__).name}, docs/architecture.md)")
