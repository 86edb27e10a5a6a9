"""Every package kmrl_sync or its tests import is declared in pyproject.toml.

An undeclared import works only while something else happens to install the package (PyJWT came
with msal, pydantic-core comes with pydantic): the day that other package drops or bounds it
differently, a fresh install breaks. kmrl_sync's imports must be in [project.dependencies]; the
tests' may also be in an optional extra. Import names are mapped to distributions the way the
installed packages say (importlib.metadata.packages_distributions()); the standard library
(sys.stdlib_module_names) and our own top-level packages need no declaration.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = frozenset({"kmrl_sync", "tests"})
# Calls that import the module named by their first argument, as `import` would.
IMPORTING_CALLS = frozenset({("pytest", "importorskip"), ("importlib", "import_module")})


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    name: str  # the top-level name, e.g. "jwt" for "from jwt.algorithms import RSAAlgorithm"


def normalize(distribution: str) -> str:
    """PEP 503: `PyJWT`, `pyjwt` and `py_jwt` are one project."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, f"pyproject.toml: cannot read the requirement {spec!r}"
    return normalize(match.group(1))


def declared(pyproject: Path) -> tuple[set[str], set[str]]:
    """The distributions of [project.dependencies], and of those plus every optional extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {requirement_name(s) for s in project.get("dependencies", [])}
    extras = {requirement_name(s) for specs in project.get("optional-dependencies", {}).values() for s in specs}
    return runtime, runtime | extras


def imports(path: Path) -> Iterator[Import]:
    """Absolute imports of a module, and the modules it names to pytest.importorskip or import_module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name.partition(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield Import(path, node.lineno, node.module.partition(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name)
              and (node.func.value.id, node.func.attr) in IMPORTING_CALLS
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield Import(path, node.lineno, node.args[0].value.partition(".")[0])


def undeclared(files: Iterable[Path], allowed: set[str], distributions: Mapping[str, list[str]],
               root: Path) -> list[str]:
    """One line per import of a third-party package that no allowed distribution provides."""
    problems = []
    for path in sorted(files):
        for imp in imports(path):
            if imp.name in sys.stdlib_module_names or imp.name in FIRST_PARTY:
                continue
            providers = distributions.get(imp.name, [])
            if not any(normalize(d) in allowed for d in providers):
                which = f"from {', '.join(sorted(set(providers)))}" if providers else "not installed"
                problems.append(f"{imp.path.relative_to(root)}:{imp.line}: imports {imp.name} ({which})")
    return problems


def python_files(*folders: str, root: Path = REPO) -> list[Path]:
    return [p for folder in folders for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts]


def test_kmrl_sync_imports_only_what_its_dependencies_declare():
    runtime, _ = declared(REPO / "pyproject.toml")
    problems = undeclared(python_files("kmrl_sync"), runtime, importlib.metadata.packages_distributions(), REPO)
    assert not problems, "not in [project.dependencies] of pyproject.toml:\n" + "\n".join(problems)


def test_the_tests_import_only_what_pyproject_declares():
    _, everything = declared(REPO / "pyproject.toml")
    problems = undeclared(python_files("tests"), everything, importlib.metadata.packages_distributions(), REPO)
    assert not problems, "not declared in pyproject.toml (dependencies or an extra):\n" + "\n".join(problems)


def test_the_check_finds_an_undeclared_import(tmp_path):
    """The check itself: what it must report and what it must let through."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["pyjwt[crypto] >=2", "Redis[hiredis]>=5,<9"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=8"]\n')
    module = tmp_path / "pkg" / "mod.py"
    module.parent.mkdir()
    module.write_text("import os, json\nfrom . import sibling\nimport kmrl_sync.loading.loader\nimport redis.asyncio\n"
                      "from jwt.algorithms import RSAAlgorithm\nimport yaml\n"
                      "def f():\n    import pytest\n    pytest.importorskip('msal')\n")
    runtime, everything = declared(tmp_path / "pyproject.toml")
    assert runtime == {"pyjwt", "redis"} and everything == {"pyjwt", "redis", "pytest"}
    distributions = {"redis": ["redis"], "jwt": ["PyJWT"], "yaml": ["PyYAML"], "pytest": ["pytest"],
                     "msal": ["msal"]}
    found = undeclared(python_files("pkg", root=tmp_path), runtime, distributions, tmp_path)
    # stdlib, relative and first-party imports pass, so do declared ones whatever their spelling
    # (PyJWT as pyjwt[crypto], redis as Redis); pytest is declared, but for tests only
    assert found == ["pkg/mod.py:6: imports yaml (from PyYAML)", "pkg/mod.py:8: imports pytest (from pytest)",
                     "pkg/mod.py:9: imports msal (from msal)"]
    assert "pkg/mod.py:8: imports pytest (from pytest)" not in undeclared([module], everything, distributions,
                                                                          tmp_path)
    assert "pkg/mod.py:9: imports msal (not installed)" in undeclared([module], everything, {}, tmp_path)
