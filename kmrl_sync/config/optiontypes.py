"""Field types shared by connector option models.

Paths in a connector file are relative to that file, not to the daemon's working directory (which
is `/` under systemd), so the loader passes the file's folder as validation context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, SecretStr, ValidationInfo

from kmrl_sync.config.secretfile import read_secret_file


def _relative_to_config(path: Path, info: ValidationInfo) -> Path:
    path = path.expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def _existing_secret_file(path: Path, info: ValidationInfo) -> Path:
    path = _relative_to_config(path, info)
    read_secret_file(path)  # fail at config time, not at 3 a.m. on the first sync
    return path


MAX_GLOB_CHARS = 1000
# Each `**` lets the matcher try every split of a path: with 6 of them one 60-folder-deep path
# takes seconds, so a tree would take days. Three cover any real pattern (`**/build/**/*.o`).
MAX_GLOB_STARSTARS = 3


def _glob_patterns(patterns: list[str]) -> list[str]:
    from kmrl_sync.config.globs import PathFilter

    for pattern in patterns:
        if not pattern.strip():
            raise ValueError("empty glob pattern")
        if len(pattern) > MAX_GLOB_CHARS:
            raise ValueError(f"glob pattern longer than {MAX_GLOB_CHARS} characters")
        if pattern.count("**") > MAX_GLOB_STARSTARS:
            raise ValueError(f"glob pattern with more than {MAX_GLOB_STARSTARS} '**' "
                             "(matching it would take time that grows with every one)")
    PathFilter(patterns, [])  # raises on a malformed pattern
    return patterns


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
#: gitignore-style include/exclude patterns, checked when the config is loaded
GlobList = Annotated[list[str], AfterValidator(_glob_patterns)]
SecretFile = Annotated[Path, AfterValidator(_existing_secret_file)]


def secret_from(value: SecretStr | None, file: Path | None) -> SecretStr | None:
    """An inline (usually `${ENV}`-interpolated) secret, else the one read from its file."""
    if value is not None:
        return value
    return read_secret_file(file) if file is not None else None
