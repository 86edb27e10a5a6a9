"""The package's shape, checked: nothing imports in a circle, module by module or folder by folder,
the folders keep their layers, key names live in one module, and the configuration's models depend
on nothing of ours.

The import graph is read from the source with `ast`, not by importing: every `import` and
`from ... import` of a kmrl_sync module counts, at module level, inside functions (a lazy import
is still a dependency; it only moves the cost) and under `if TYPE_CHECKING:`. Typing-only imports
count because a circle closed through one is still a circle in the design: the two modules cannot
be understood, tested or moved one without the other, and the first annotation evaluated at run
time (pydantic, `typing.get_type_hints`) turns it into an import. What does not count is the
implicit import of a parent package when a submodule is imported: `kmrl_sync.connectors.imap.client`
importing `kmrl_sync.connectors.imap.fetched` runs `imap/__init__.py` first, which imports
`connector`, which imports `client`; that is how packages work, not a dependency of `client`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kmrl_sync"
KEYS_MODULE = "kmrl_sync.engine.keys"


def _modules() -> dict[str, tuple[Path, str]]:
    """Dotted name -> (file, the package relative imports start from)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        modules[".".join(parts)] = (path, package)
    return modules


def _own_module(name: str, modules: dict[str, tuple[Path, str]]) -> str | None:
    """The kmrl_sync module `name` refers to: itself, or the module an attribute path lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import sub` depends on pkg.sub when that is a module, else on pkg itself
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                if target == "kmrl_sync" or target.startswith("kmrl_sync."):
                    own = _own_module(target, modules)
                    if own is not None and own != name:
                        graph[name].add(own)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _describe(component: set[str], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} -> {b}" for a in sorted(component) for b in sorted(graph[a] & component)]
    return "; ".join(edges)


def test_no_module_imports_in_a_circle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import circles (open them, e.g. by moving what both sides need into a third module):\n" + (
        "\n".join(_describe(c, graph) for c in found))


def folder_of(module: str) -> str:
    """The folder a module belongs to: `kmrl_sync.engine.state` -> `kmrl_sync.engine`; a module at the
    top (`kmrl_sync.display`) is a node of its own, and `kmrl_sync` itself (its __init__) too."""
    return ".".join(module.split(".")[:2])


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        mine = folder_of(module)
        folders.setdefault(mine, set()).update(folder_of(t) for t in targets if folder_of(t) != mine)
    for targets in list(folders.values()):
        for target in targets:
            folders.setdefault(target, set())
    return folders


def _folder_edges(component: set[str], graph: dict[str, set[str]]) -> str:
    """Each folder-to-folder import in a circle, with the modules that make it."""
    lines = []
    for a in sorted(component):
        for b in sorted(component - {a}):
            why = sorted(f"{m} -> {t}" for m, ts in graph.items() if folder_of(m) == a
                         for t in ts if folder_of(t) == b)
            if why:
                more = f" and {len(why) - 3} more" if len(why) > 3 else ""
                lines.append(f"{a} -> {b}: " + ", ".join(why[:3]) + more)
    return "\n".join(lines)


def test_no_folder_imports_in_a_circle():
    """Modules free of circles can still make their folders import each other (config/loader.py
    asking engine/keys.py while engine/runner.py reads config/models.py): then neither folder can
    be understood or moved without the other, and the layers the folders promise are not there."""
    graph = import_graph()
    found = cycles(folder_graph(graph))
    assert not found, "folders importing each other (move what both sides need, or the module that asks, a layer " \
        "up or down):\n" + "\n".join(_folder_edges(c, graph) for c in found)


#: The folders from the top down: each imports only folders after it (README, Development: Layout).
LAYERS = ("cli", "daemon", "loading", "connectors", "engine", "content", "config")


def test_each_folder_imports_only_the_layers_below_it():
    graph = folder_graph(import_graph())
    upward = []
    for i, layer in enumerate(LAYERS):
        for target in sorted(graph.get(f"kmrl_sync.{layer}", set())):
            name = target.removeprefix("kmrl_sync.")
            if name in LAYERS[: i + 1]:
                upward.append(f"{layer} -> {name}")
    assert not upward, "imports against the layering " + " -> ".join(LAYERS) + ":\n" + "\n".join(upward)


def test_every_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS), "add the new folder to LAYERS, where it belongs"


def test_the_folder_check_sees_a_circle_of_acyclic_modules(tmp_path, monkeypatch):
    """The checker itself: config.loader -> engine.keys and engine.runner -> config.models make no
    module circle, but a folder circle."""
    package = tmp_path / "kmrl_sync"
    for folder in ("config", "engine"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "config" / "models.py").write_text("")
    (package / "config" / "loader.py").write_text("from kmrl_sync.engine import keys\n")
    (package / "engine" / "keys.py").write_text("")
    (package / "engine" / "runner.py").write_text("from kmrl_sync.config.models import Config\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    graph = import_graph()
    assert cycles(graph) == []
    assert cycles(folder_graph(graph)) == [{"kmrl_sync.config", "kmrl_sync.engine"}]


def test_the_cycle_check_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself: a circle closed by a function-level or a typing-only import is found."""
    package = tmp_path / "kmrl_sync"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from kmrl_sync.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from kmrl_sync import c\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n")
    (package / "d.py").write_text("import kmrl_sync.a\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    assert cycles(import_graph()) == [{"kmrl_sync.a", "kmrl_sync.sub.b", "kmrl_sync.c"}]


def test_config_models_import_nothing_of_ours():
    """The models are what every layer shares; importing anything of ours would pull a layer along."""
    assert import_graph()["kmrl_sync.config.models"] == set()


def _builds_a_key(node: ast.JoinedStr) -> bool:
    """An f-string starting `{...prefix}:`, the shape of every kmrl-sync key name."""
    first, second = [*node.values, None, None][:2]
    if not isinstance(first, ast.FormattedValue) or not isinstance(second, ast.Constant):
        return False
    return ast.unparse(first.value).endswith("prefix") and str(second.value).startswith(":")


def test_key_names_are_built_only_in_the_keys_module():
    offenders = []
    for name, (path, _package) in sorted(_modules().items()):
        if name == KEYS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.JoinedStr) and _builds_a_key(node):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    "_kombu." in node.value or "\x06\x16" in node.value):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: Celery's key {node.value!r}")
    assert not offenders, "key names belong in kmrl_sync/engine/keys.py:\n" + "\n".join(offenders)
