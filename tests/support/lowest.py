"""The lowest release pyproject.toml allows of a package we reach into, installed beside the newest.

A `_compat` module (kmrl_sync/connectors/imap/imapclient_compat.py) touches a library's internals,
so the tests run it on both ends of the range pyproject.toml allows: the newest release is what
`pip install` picks for .venv; the lowest one is installed by `scripts/bootstrap test` into
`.venv/lowest/<package>` and put in front of it through PYTHONPATH by the tests that need it.

    python -m tests.support.lowest imapclient            # prints "<version> <folder>"
    python -m tests.support.lowest imapclient --installed  # exit 0 when the folder holds that release
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lowest_version(package: str) -> str:
    """The `>=` bound of `package` in pyproject.toml's dependencies."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in dependencies:
        match = re.fullmatch(rf"{re.escape(package)}(?:\[[^]]*\])?\s*>=\s*([\w.]+)\s*,.*", spec, re.IGNORECASE)
        if match:
            return match.group(1)
    raise LookupError(f"pyproject.toml: no '{package}>=...' among the dependencies")


def lowest_folder(package: str) -> Path:
    """Where `scripts/bootstrap test` installs that release (importable through PYTHONPATH)."""
    return REPO / ".venv" / "lowest" / package


def release(version: str) -> tuple[int, ...]:
    """`3` and `3.0.0` are one release (PEP 440 pads with zeros); plain numeric versions only."""
    numbers = [int(part) for part in version.split(".")]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def installed_version(package: str) -> str | None:
    """The release of `package` in its lowest_folder, if any."""
    for dist in distributions(path=[str(lowest_folder(package))]):
        if dist.metadata["Name"].lower() == package.lower():
            return dist.version
    return None


def is_installed(package: str) -> bool:
    found = installed_version(package)
    return found is not None and release(found) == release(lowest_version(package))


if __name__ == "__main__":
    name = sys.argv[1]
    if sys.argv[2:] == ["--installed"]:
        sys.exit(0 if is_installed(name) else 1)
    print(lowest_version(name), lowest_folder(name))
