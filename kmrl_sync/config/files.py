"""Reading one configuration file: bounded, regular files only, and a plain subset of YAML.

A configuration file is written by a person and may be wrong in any way, or hostile: `check` must
refuse it in bounded time and memory and name the problem, never hang, crash or grow without
limit. So before a byte is parsed:

- the path must be a regular file (a FIFO named `x.yaml` would block the read forever, `/dev/zero`
  would never end): it is `stat`ed before it is opened, opened non-blocking, and checked again on
  the open descriptor;
- at most `MAX_BYTES` are read; a larger file is refused, not truncated.

and the YAML read from it is the subset a configuration needs (scalars, lists, mappings):

- aliases (`*name`) are refused outright. Config files are small and have no use for them, and
  the "billion laughs" document (nine aliases of nine aliases ...) turns 538 bytes into gigabytes
  once anything walks it. Refusing them is simpler to reason about than any expansion budget;
  anchors without aliases are harmless and allowed;
- nesting deeper than `MAX_DEPTH` and documents of more than `MAX_VALUES` values are refused while
  they are composed, before the parser has built much of them (the composer recurses, so deep
  nesting would otherwise end in a RecursionError);
- only the tags of plain data are allowed (str, int, float, bool, null, list, mapping): `!!binary`,
  `!!timestamp`, `!!set`, `!!python/...` and local tags are refused. Unquoted dates stay strings
  (`department: 2024-01` means the text), and `<<` is an ordinary key (merges need aliases);
- numbers must be finite and of sane length: `.nan`, `.inf` and a 5,000-digit integer are refused
  here, before any field sees them;
- a key that appears twice in one mapping is refused (YAML would silently keep the last one);
- keys are the text as written: `on:` is the key "on", not the boolean true.

Every problem is `file: field: what is wrong`, as `kmrl-sync check` prints it.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MiB: a connector file is a few hundred bytes, sync.yaml a few KB
MAX_DEPTH = 50
MAX_VALUES = 20_000  # scalars, lists and mappings in one document
MAX_NUMBER_CHARS = 40  # a written integer or float longer than this is refused, not parsed

_CORE = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
SEQ, MAP = _CORE + "seq", _CORE + "map"
_SCALAR_TAGS = frozenset({STR, INT, FLOAT, BOOL, NULL})
# Implicit types a configuration must not get by accident: dates become strings, `<<` and `=` keys.
_NOT_IMPLICIT = frozenset({_CORE + "timestamp", _CORE + "merge", _CORE + "value", _CORE + "yaml"})

_KIND = {
    stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
}


def describe_size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and limit % (1 << 20) == 0 else f"{limit:,} bytes"


def read_limited(path: str | os.PathLike[str], limit: int = MAX_BYTES) -> bytes:
    """The content of the regular file `path`, at most `limit` bytes; ValueError says what is wrong.

    Why stat first: opening a FIFO blocks until a writer appears, and opening a device can have
    effects of its own (a tape rewinds); neither is ever a configuration or a secret file. The
    open is non-blocking all the same, and the descriptor is checked again in case the path was
    swapped in between. A missing file raises FileNotFoundError, so callers can word that case.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except NotADirectoryError:
        raise FileNotFoundError(errno.ENOTDIR, "a parent of it is not a directory", str(path)) from None
    except PermissionError:
        raise ValueError("is not readable by this user") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ValueError(f"cannot read: {_os_reason(exc)}") from None
    _check_regular(st, limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except PermissionError:
        raise ValueError("is not readable by this user") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {_os_reason(exc)}") from None
    try:
        _check_regular(os.fstat(fd), limit)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ValueError(f"cannot read: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"larger than {describe_size(limit)}")
    return b"".join(chunks)


def _check_regular(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KIND.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ValueError(f"is {kind}, not a regular file")
    if st.st_size > limit:
        raise ValueError(f"larger than {describe_size(limit)} ({st.st_size:,} bytes)")


def _os_reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


# --------------------------------------------------------------------------- YAML


class _Refused(yaml.YAMLError):
    """A document this loader will not compose further (alias, depth, size)."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class ConfigYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the limits above enforced while composing (see the module doc)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NOT_IMPLICIT]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0
        self.values = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # The scanner looks up to 1,024 characters ahead for a key after every `[` or `{`, at a
        # cost that grows with the open brackets: refuse deep flow nesting where it is scanned.
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH}", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"YAML aliases (*{event.anchor}) are not supported in configuration: write the value out",
                           event.start_mark)
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Refused(f"more than {MAX_VALUES:,} values in one file", event.start_mark)
        if self.depth >= MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH}", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _line(node: Any) -> int:
    return node.start_mark.line + 1


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


class _Converter:
    """Composed nodes -> plain Python data, collecting every problem with its field path."""

    def __init__(self, loader: ConfigYamlLoader, file: Path | str, problems: list[str]):
        self.loader = loader
        self.file = file
        self.problems = problems

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.file}: {where or '(top level)'}: {message}")

    def convert(self, node: Any, where: str) -> Any:
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag not in _SCALAR_TAGS:
                return self._bad_tag(node, where)
            if tag in (INT, FLOAT) and len(node.value) > MAX_NUMBER_CHARS:
                self.problem(where, f"number too long (more than {MAX_NUMBER_CHARS} characters, line {_line(node)})")
                return None
            # An explicit `!!bool maybe` reaches PyYAML's constructor with a value it never checked
            # (KeyError): a tagged scalar must read as its tag would be read untagged.
            if tag != STR and self.loader.resolve(yaml.ScalarNode, node.value, (True, False)) != tag:
                self.problem(where, f"{node.value!r} is not a valid {_short_tag(tag)[2:]} (line {_line(node)})")
                return None
            try:
                value = self.loader.yaml_constructors[tag](self.loader, node)
            except (yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
                self.problem(where, f"not a valid {_short_tag(tag)[2:]} (line {_line(node)}): {exc}")
                return None
            if tag == FLOAT and not math.isfinite(value):
                self.problem(where, f"{node.value!r} is not a finite number (line {_line(node)})")
                return None
            return value
        if isinstance(node, yaml.SequenceNode):
            if tag != SEQ:
                return self._bad_tag(node, where)
            return [self.convert(item, f"{where}[{i}]") for i, item in enumerate(node.value)]
        if tag != MAP:
            return self._bad_tag(node, where)
        result: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                self.problem(where, f"a key must be a plain name (line {_line(key_node)})")
                continue
            key = key_node.value
            if key in result:
                self.problem(where, f"key {key!r} appears twice (lines {lines[key]} and {_line(key_node)})")
                continue
            lines[key] = _line(key_node)
            result[key] = self.convert(value_node, f"{where}.{key}" if where else key)
        return result

    def _bad_tag(self, node: Any, where: str) -> None:
        self.problem(where, f"YAML tag {_short_tag(node.tag)} is not allowed in configuration (line {_line(node)}); "
                            "use plain strings, numbers, booleans, lists and mappings")


def parse_yaml(text: str, file: Path | str, problems: list[str]) -> Any:
    """The document in `text` as plain data, or None with the problems appended."""
    loader: ConfigYamlLoader | None = None
    try:
        loader = ConfigYamlLoader(text)  # its reader refuses unprintable characters right here
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(top level)"
        if isinstance(exc, yaml.reader.ReaderError):
            what = f"invalid YAML: character U+{exc.character:04X} is not allowed (position {exc.position:,})"
        elif isinstance(exc, _Refused):
            what = exc.problem
        else:
            what = f"invalid YAML: {getattr(exc, 'problem', None) or exc}"
        problems.append(f"{file}: {where}: {what}")
        return None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return {}
    before = len(problems)
    data = _Converter(loader, file, problems).convert(node, "")
    if len(problems) > before:
        return None
    # A document that is only a null (`~`, `null`, an anchored nothing like `&a`) says as much as an
    # empty one; returned as None it would read as a failure without a problem to show.
    return {} if data is None else data


def load_mapping(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """Read and parse one configuration file that must hold a mapping (or nothing)."""
    try:
        raw = read_limited(path)
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
        return None
    except ValueError as exc:
        problems.append(f"{path}: {exc}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text (byte {exc.start:,})")
        return None
    data = parse_yaml(text, path, problems)
    if data is None:
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: (top level): expected a mapping of keys, got {_type_name(data)}")
        return None
    return data


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)
