"""The import graph holds the architecture: no cycle in ``mmcore/``, plugins use the public API.

Every module is parsed with :mod:`ast`; every import counts, at the top of a file, inside a
function, under ``if TYPE_CHECKING:``, relative or absolute. ``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg``. A package's ``__init__`` is not
implied by importing one of its modules (``import mmcore.spec`` runs ``mmcore/__init__.py``
first, but that is the package facade, not a dependency of ``spec``).

Run as a script (``python tests/test_layers.py``) to print the graph's cycles and the
plugins' imports of mmcore.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mmcore"
PLUGINS = ROOT / "plugins"

# What a plugin may import from mmcore (docs/plugins.md): the public API and the kit.
PLUGIN_API = {"mmcore", "mmcore.testing"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, name: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in the file at ``path``.

    ``name`` is the file's dotted module name, used to resolve relative imports.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                # a package's own __init__ is level 1 of itself; a module's is its parent
                drop = node.level - 1 if is_package else node.level
                if drop:
                    base = base[:-drop]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield node.lineno, module, alias.name


def resolve(module: str, imported: str | None, known: set[str]) -> str:
    """The module an import depends on: ``pkg.name`` when that is a module, else ``pkg``."""
    if imported is not None and f"{module}.{imported}" in known:
        return f"{module}.{imported}"
    return module


def core_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported mmcore module: first line}, for every module of the package."""
    root = package.parent
    files = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for line, module, imported in imports(path, name):
            target = resolve(module, imported, known)
            if target in known and target != name:
                edges.setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        colour[start] = GREY
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour.get(child, BLACK) == GREY:
                    path = [n for n, _ in stack]
                    return path[path.index(child) :] + [child]
                if colour.get(child) == WHITE:
                    colour[child] = GREY
                    stack.append((child, iter(sorted(graph[child]))))
                    break
            else:
                colour[node] = BLACK
                stack.pop()
    return None


def file_of(module: str, root: Path = ROOT) -> str:
    """The source file of a dotted module name: ``pkg/mod.py`` or ``pkg/sub/__init__.py``."""
    base = root.joinpath(*module.split("."))
    return str((base / "__init__.py" if base.is_dir() else base.with_suffix(".py")).relative_to(root))


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]], root: Path = ROOT) -> str:
    steps = [f"  {a} -> {b}  ({file_of(a, root)} line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return "import cycle:\n" + "\n".join(steps)


def plugin_imports() -> Iterator[tuple[Path, int, str]]:
    """(file, line, module) for every import of mmcore in the plugins' sources."""
    for src in sorted(PLUGINS.glob("*/src")):
        for path in sorted(src.rglob("*.py")):
            name = module_name(path, src)
            for line, module, imported in imports(path, name):
                if module == "mmcore" or module.startswith("mmcore."):
                    target = module if imported is None else resolve(module, imported, _core_modules())
                    yield path, line, target


def _core_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_core_has_no_import_cycle() -> None:
    graph = core_graph()
    assert "mmcore.spec" in graph and graph["mmcore.spec"], "the graph reader found no imports"
    cycle = find_cycle(graph)
    assert cycle is None, describe_cycle(cycle, graph)


def test_plugins_import_only_the_public_api() -> None:
    found = list(plugin_imports())
    assert found, "no plugin imports mmcore: the reader is broken"
    bad = dict.fromkeys(  # one line per file, line and module
        f"{path.relative_to(ROOT)}:{line}: imports {module}" for path, line, module in found if module not in PLUGIN_API
    )
    assert not bad, "plugins may import only mmcore and mmcore.testing:\n" + "\n".join(bad)


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("def f():\n    from .b import y\n")
    (pkg / "b.py").write_text("from . import sub\n")
    (pkg / "sub" / "__init__.py").write_text("from ..c import z\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = core_graph(pkg)
    assert graph == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.b": 2},
        "pkg.b": {"pkg.sub": 1},
        "pkg.sub": {"pkg.c": 1},
        "pkg.c": {"pkg.a": 1},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub", "pkg.c", "pkg.a"]


# The layers, lowest first (docs/architecture.md draws them). A module imports only modules of
# its own layer or of a lower one. Every module of mmcore/ must be listed: a new file is placed
# on purpose. Known upward imports would be listed in KNOWN_UPWARD with the reason; there are
# none, and the list may only shrink.
LAYERS: dict[str, set[str]] = {
    # the contracts and the plumbing every layer may use; no model code
    "contracts": {
        "version", "errors", "config", "hookspecs", "registry", "plugins", "builtin", "catalog",
        "tomlfile", "files", "io", "types", "records", "interfaces", "templates",
    },
    # the parts a model is made of
    "parts": {"backbone", "blocks", "decode", "fusion", "fusion_xattn", "resampler", "projectors", "lora"},
    # a model from a spec, its weights and its directory; quantize is here because a model
    # directory may hold an int8 model, which checkpoint.load rebuilds
    "composition": {"spec", "schema", "model", "builder", "compatibility", "weights", "gpt2", "hf", "checkpoint", "sharded", "quantize", "provenance"},
    # what is done with a model
    "workflows": {
        "data", "loader", "objectives", "trainer", "trainer_base", "trainer_dist", "trainer_optim", "trainer_data",
        "trainer_checkpoints", "trainer_log", "interrupts", "schedule", "selection", "ema", "prompting", "generation",
        "outputs", "evaluate", "explain", "explain_report", "export", "plot",
    },
    # the entry points: the command line and its helpers, the conformance kit, the package facade
    "cli": {
        "cli", "commands", "__main__", "docgen", "scaffold", "testing", "testing.kit", "testing.objective_kit", "testing.capability_kit", "testing.examples", "testing.common", "testing.checks",
        "testing.harness", "testing.encoders", "testing.fusions", "testing.heads", "testing.processors",
        "testing.pytest_plugin", "",
    },
}  # fmt: skip
KNOWN_UPWARD: set[tuple[str, str]] = set()


def layer_of() -> dict[str, int]:
    """mmcore module -> the index of its layer in :data:`LAYERS`."""
    out = {}
    for i, names in enumerate(LAYERS.values()):
        for name in names:
            out["mmcore" + (f".{name}" if name else "")] = i
    return out


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(set(core_graph()) - set(layer_of()))
    assert not unplaced, f"place these modules in a layer of LAYERS (tests/test_layers.py): {unplaced}"
    gone = sorted(set(layer_of()) - set(core_graph()))
    assert not gone, f"LAYERS names modules that do not exist: {gone}"


def test_no_module_imports_a_higher_layer() -> None:
    graph, layer, names = core_graph(), layer_of(), list(LAYERS)
    up = [
        f"{file_of(a)} line {line}: {a} ({names[layer[a]]}) imports {b} ({names[layer[b]]})"
        for a, edges in sorted(graph.items())
        for b, line in sorted(edges.items())
        if layer.get(b, -1) > layer.get(a, len(names)) and (a, b) not in KNOWN_UPWARD
    ]
    assert not up, "imports that go up a layer:\n" + "\n".join(up)


def drawn_layers(path: Path = ROOT / "docs" / "architecture.md") -> dict[str, set[str]]:
    """The layers drawn in docs/architecture.md (the first code block after "## Layers")."""
    text = path.read_text(encoding="utf-8")
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    layers: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        if not line.strip() or line.strip() == "|":
            continue
        if not line[0].isspace():
            current, line = line.split(None, 1)[0], line.split(None, 1)[1]
            layers[current] = set()
        assert current is not None, f"docs/architecture.md: a module line before any layer: {line!r}"
        for item in line.split(","):
            name = item.split("(")[0].strip()  # "__init__ (the facade)" -> "__init__"
            if name:
                layers[current].add("" if name == "__init__" else name)
    return dict(reversed(list(layers.items())))  # drawn top-down, LAYERS lists them bottom-up


def test_the_drawing_in_the_docs_is_the_layers_table() -> None:
    drawn = drawn_layers()
    assert list(drawn) == list(LAYERS), f"layers drawn {list(drawn)}, LAYERS {list(LAYERS)}"
    for name, modules in LAYERS.items():
        assert drawn[name] == modules, (
            f"docs/architecture.md draws layer {name!r} with {sorted(drawn[name] - modules)} extra and "
            f"{sorted(modules - drawn[name])} missing"
        )


if __name__ == "__main__":
    g = core_graph()
    seen = 0
    while (c := find_cycle(g)) is not None and seen < 20:
        print(describe_cycle(c, g))
        del g[c[0]][c[1]]  # remove the edge and look for another
        seen += 1
    print(f"{seen} cycle(s) shown")
    for path, line, module in plugin_imports():
        if module not in PLUGIN_API:
            print(f"{path.relative_to(ROOT)}:{line}: {module}")
