"""Issue 15, "config loading is not bounded": each finding, tried the way it was found.

Every hostile or careless configuration must be refused by `kmrl-sync check` with exit 2 and
`file: field: problem` lines, in bounded time and memory, without a traceback; and a refused
configuration never reaches a run (`sync --all` exits 2 and writes nothing to Redis).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.adversarial.support import assert_bounded, assert_refused, run_cli
from tests.conftest import REPO

MAIN = 'redis: {url: "redis://127.0.0.1:1"}\nconnectors_dir: connectors\n'

# The "billion laughs" document (342 bytes; the had 538): nine levels of nine aliases each.
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
) + "\n"


def site(tmp_path: Path, main: str = MAIN, **connectors: str) -> Path:
    (tmp_path / "connectors").mkdir(exist_ok=True)
    (tmp_path / "sync.yaml").write_text(main)
    for name, body in connectors.items():
        (tmp_path / "connectors" / f"{name}.yaml").write_text(textwrap.dedent(body))
    return tmp_path / "sync.yaml"


def check(config: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli("check", "-c", str(config), *extra, env=env)


def problems_of(config: Path, env: dict[str, str] | None = None) -> list[str]:
    """The loader in this process (for the larger matrices; the CLI cases cover the subprocess)."""
    from kmrl_sync.loading.loader import ConfigError, load_config

    try:
        load_config(config, env={**os.environ, **(env or {})})
    except ConfigError as exc:
        return exc.problems
    return []


# --------------------------------------------------------------------------- 1. unbounded reads


def test_the_billion_laughs_is_refused_in_bounded_memory(tmp_path):
    config = site(tmp_path, MAIN + BILLION_LAUGHS)
    result = check(config)
    assert_refused(result, config)
    assert any("aliases" in p for p in result.problems), result.problems


def test_an_alias_in_a_connector_file_is_refused_too(tmp_path):
    config = site(tmp_path, a="type: filesystem\noptions: &o {root: /tmp}\nx: *o\n")
    result = check(config)
    assert_refused(result, tmp_path / "connectors" / "a.yaml")
    assert "line 3: YAML aliases (*o) are not supported" in result.stderr


def test_dev_zero_as_the_config_is_refused_unread():
    result = check(Path("/dev/zero"))
    assert_refused(result, "/dev/zero")
    assert result.problems == ["/dev/zero: is a character device, not a regular file"]


def test_a_config_larger_than_a_mebibyte_is_refused(tmp_path):
    config = site(tmp_path, MAIN + "# " + "x" * (1 << 20) + "\n")
    result = check(config)
    assert_refused(result, config)
    assert result.problems[0].startswith(f"{config}: larger than 1 MiB")


@pytest.mark.parametrize("where", ["connector file", "main config", "secret file"])
def test_a_fifo_is_refused_without_blocking(tmp_path, where):
    """Nobody ever writes to these FIFOs: a blocking open would hang `check` forever."""
    config = site(tmp_path)
    fifo = {"connector file": tmp_path / "connectors" / "f.yaml", "main config": tmp_path / "fifo.yaml",
            "secret file": tmp_path / "pw"}[where]
    os.mkfifo(fifo)
    if where == "main config":
        config = fifo
    if where == "secret file":
        config.write_text('redis: {url: "redis://127.0.0.1:1", password_file: pw}\n')
    result = check(config)
    assert_refused(result, fifo if where != "secret file" else config)
    assert "FIFO" in result.stderr


def test_a_directory_named_like_a_connector_file_is_refused(tmp_path):
    config = site(tmp_path)
    (tmp_path / "connectors" / "d.yaml").mkdir()
    result = check(config)
    assert_refused(result, tmp_path / "connectors" / "d.yaml")
    assert "is a directory, not a regular file" in result.stderr


# --------------------------------------------------------------------------- 2. depth


@pytest.mark.parametrize("style", ["flow", "block"])
def test_twenty_thousand_deep_nesting_is_refused(tmp_path, style):
    deep = ("a: " + "[" * 20_000 + "]" * 20_000 + "\n" if style == "flow"
            else "a:\n" + "- " * 20_000 + "x\n")
    config = site(tmp_path, MAIN + deep)
    result = check(config)
    assert_refused(result, config)
    assert "nesting deeper than 50" in result.stderr


@pytest.mark.parametrize("text", ["", "~\n", "null\n", "&0", "--- !!null\n"])
def test_a_document_that_is_only_a_null_reads_as_an_empty_one(tmp_path, text):
    """Found by the fuzz test: `&0` (an anchored empty node) was refused with no problem at all."""
    config = site(tmp_path, main=text, c=text)
    assert problems_of(config) == [f"{tmp_path / 'connectors' / 'c.yaml'}: type: Field required"]


def test_nesting_of_fifty_is_still_read(tmp_path):
    """The bound refuses only what is deeper: 49 nested lists under a key are parsed (and then
    refused as an unknown key, which shows they were read)."""
    config = site(tmp_path, MAIN + "zz: " + "[" * 49 + "]" * 49 + "\n")
    result = check(config)
    assert_refused(result, config)
    assert result.problems == [f"{config}: zz: unknown key (check the spelling)"]


# --------------------------------------------------------------------------- 3. numbers

# Every duration (and float) field there is, kmrl-sync's and each built-in type's.
DURATION_FIELDS = {
    "main": ["daemon.lease_ttl", "daemon.heartbeat_ttl", "daemon.alert_after", "daemon.startup_jitter"],
    "filesystem": ["schedule.every", "options.min_age", "options.max_file_mb"],
    "imap": ["options.timeout", "options.max_attachment_mb"],
    "sharepoint": ["options.timeout", "options.max_throttle_wait", "options.max_file_mb",
                   "options.max_requests_per_second"],
}
CONNECTOR_BASE = {
    "filesystem": {"type": "filesystem", "options": {"root": "/tmp"}},
    "imap": {"type": "imap", "options": {"host": "h", "username": "u", "password": "p"}},
    "sharepoint": {"type": "sharepoint", "options": {"tenant_id": "t", "client_id": "c", "client_secret": "s",
                                                     "site_url": "https://x.example/sites/a"}},
}


def _with(doc: dict, dotted: str, value: object) -> dict:
    doc = json.loads(json.dumps(doc))
    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return doc


NUMBERS = [".nan", ".inf", "-.inf", "1.0e+30", "'1e30'", "'nan'", "'${KMRL_ADV_NUMBER}'", "-5",
           "99999999999999999999d", "'0.0000001'"]


@pytest.mark.parametrize("value", [".nan", "'${KMRL_ADV_NUMBER}'"])
def test_nan_durations_are_refused_by_check(tmp_path, value):
    main_doc = {"redis": {"url": "redis://127.0.0.1:1"}}
    for dotted in DURATION_FIELDS["main"]:
        main_doc = _with(main_doc, dotted, "@VALUE@")
    config = site(tmp_path, json.dumps(main_doc).replace('"@VALUE@"', value))
    result = check(config, env={"KMRL_ADV_NUMBER": "nan"})
    assert_refused(result, config)
    assert [p.split(": ")[1] for p in result.problems] == DURATION_FIELDS["main"], result.problems


@pytest.mark.parametrize("value", NUMBERS)
def test_non_finite_and_absurd_numbers_are_refused_in_every_field_at_once(tmp_path, value):
    """One config with the value in every duration/number field: every one of them is named."""
    env = {"KMRL_ADV_NUMBER": "inf"}
    main_doc = {"redis": {"url": "redis://127.0.0.1:1"}}
    for dotted in DURATION_FIELDS["main"]:
        main_doc = _with(main_doc, dotted, "@VALUE@")
    config = site(tmp_path, json.dumps(main_doc).replace('"@VALUE@"', value))
    problems = problems_of(config, env)
    for dotted in DURATION_FIELDS["main"]:
        assert any(p.startswith(f"{config}: {dotted}: ") for p in problems), (dotted, problems)

    config = site(tmp_path)  # the main file fixed: now every connector field at once
    for kind, fields in DURATION_FIELDS.items():
        if kind == "main":
            continue
        doc = CONNECTOR_BASE[kind]
        for dotted in fields:
            doc = _with(doc, dotted, "@VALUE@")
        (tmp_path / "connectors" / f"{kind}.yaml").write_text(json.dumps(doc).replace('"@VALUE@"', value))
    problems = problems_of(config, env)
    for kind, fields in DURATION_FIELDS.items():
        for dotted in fields if kind != "main" else ():
            file = tmp_path / "connectors" / f"{kind}.yaml"
            if value == "'0.0000001'" and dotted.endswith(("_mb", "_second")):
                continue  # a tiny positive size or rate is odd, not wrong
            assert any(p.startswith(f"{file}: {dotted}: ") for p in problems), (file, dotted, problems)


# --------------------------------------------------------------------------- 4. names reaching Redis


@pytest.mark.parametrize("queue", ["kmrl", "kmrl:connectors", "kmrl:{docs}:cursor", "kmrl:doc:x", "kmrl:events",
                                   "_kombu.binding.document_processing", "unacked", "unacked_index", "q{x}"])
def test_a_queue_named_like_a_key_of_ours_or_celerys_is_refused(tmp_path, queue):
    config = site(tmp_path, MAIN + f"queue: {json.dumps({'format': 'list', 'name': queue})}\n")
    assert [p.split(": ")[:2] for p in problems_of(config)] == [[str(config), "queue.name"]]
    config = site(tmp_path, c=f"type: filesystem\nqueue: {json.dumps({'name': queue})}\noptions: {{root: /tmp}}\n")
    file = tmp_path / "connectors" / "c.yaml"
    assert [p.split(": ")[:2] for p in problems_of(config)] == [[str(file), "queue.name"]]


def test_a_queue_on_a_state_key_never_reaches_a_run(tmp_path, project, redis_client):
    project.filesystem("docs", tmp_path, extra='queue: {name: "kmrl:connectors", format: list}\n')
    for command in (["check"], ["sync", "--all"]):
        result = project.cli(*command)
        assert result.returncode == 2, result.stderr
        assert "docs.yaml: queue.name: 'kmrl:connectors' is inside kmrl-sync's own keys" in result.stderr
    assert redis_client.dbsize() == 0


NAME_FIELDS = ["department", "name", "queue.name", "queue.task", "queue.delete_task", "type"]
CONTROL_CHARS = ["\\0", "\\e", "\\t", "\\n", "\\r", "\\x7f", "\\x9b", "\\ud800"]


@pytest.mark.parametrize("field", NAME_FIELDS)
def test_control_characters_in_names_that_reach_redis_are_refused(tmp_path, field):
    for char in CONTROL_CHARS:
        doc = _with({"type": "filesystem", "options": {"root": "/tmp"}}, field, "@VALUE@")
        config = site(tmp_path, c=json.dumps(doc).replace('"@VALUE@"', f'"a{char}b"'))
        problems = problems_of(config)
        assert [p.split(": ")[1] for p in problems] == [field], (char, problems)


def test_a_nul_in_department_never_reaches_a_run(tmp_path, project, redis_client):
    project.connector("docs", f'type: filesystem\ndepartment: "eng\\0"\noptions: {{root: {tmp_path}}}\n')
    for command in (["check"], ["sync", "--all"]):
        result = project.cli(*command)
        assert result.returncode == 2, result.stderr
        assert "docs.yaml: department: must not contain control characters (found U+0000)" in result.stderr
    assert redis_client.dbsize() == 0


def test_a_nul_from_the_environment_is_refused_like_one_written(tmp_path):
    """Environment values cannot hold NUL, but they can hold other control characters and bytes
    that are not UTF-8 (Python keeps them as lone surrogates)."""
    config = site(tmp_path, 'redis: {url: "redis://127.0.0.1:1", key_prefix: "${KMRL_ADV_PREFIX}"}\n',
                  c="type: filesystem\ndepartment: '${KMRL_ADV_DEPT}'\noptions: {root: /tmp}\n")
    env = {"KMRL_ADV_PREFIX": "km\x1brl", "KMRL_ADV_DEPT": os.fsdecode(b"eng\xff")}
    result = check(config, env=env)
    assert_refused(result, config)
    assert f"{config}: redis.key_prefix: must not contain control characters (found U+001B)" in result.problems
    config.write_text(MAIN)
    result = check(config, env=env)
    assert_refused(result, tmp_path / "connectors" / "c.yaml")
    assert result.problems == [f"{tmp_path / 'connectors' / 'c.yaml'}: department: is not valid UTF-8 text"]


def test_escape_sequences_in_keys_are_shown_not_played(tmp_path):
    config = site(tmp_path, MAIN + '"\\e[2J\\e[31mred": 1\n')
    result = check(config)
    assert_refused(result, config)
    assert "\x1b" not in result.stderr
    assert "\\x1b[2J" in result.stderr


# --------------------------------------------------------------------------- 5. filesystem root


def test_a_filesystem_root_that_is_a_file_is_refused_a_missing_one_allowed(tmp_path):
    (tmp_path / "plain").write_text("x")
    config = site(tmp_path, a=f"type: filesystem\noptions: {{root: {tmp_path / 'plain'}}}\n",
                  b=f"type: filesystem\noptions: {{root: {tmp_path / 'plain' / 'under'}}}\n",
                  c=f"type: filesystem\noptions: {{root: {tmp_path / 'not-yet-mounted'}}}\n",
                  d="type: filesystem\noptions: {root: /dev/null}\n")
    result = check(config)
    assert_refused(result, *(tmp_path / "connectors" / f"{n}.yaml" for n in "abd"))
    assert [p.split(": ")[1] for p in result.problems] == ["options.root"] * 3, result.problems
    (tmp_path / "connectors" / "a.yaml").unlink()
    (tmp_path / "connectors" / "b.yaml").unlink()
    (tmp_path / "connectors" / "d.yaml").unlink()
    result = check(config)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- 6. repeated keys


@pytest.mark.parametrize(("text", "where", "key", "lines"), [
    ("type: filesystem\noptions: {root: /tmp}\ntype: imap\n", "(top level)", "type", (1, 3)),
    ("type: filesystem\noptions:\n  root: /tmp\n  root: /srv\n", "options", "root", (3, 4)),
    ("type: filesystem\nschedule: {every: 5m, 'every': 1h}\noptions: {root: /tmp}\n", "schedule", "every", (2, 2)),
    ("type: filesystem\noptions: {root: /tmp, include: [{a: 1, a: 2}]}\n", "options.include[0]", "a", (2, 2)),
])
def test_a_repeated_key_is_refused_at_any_depth(tmp_path, text, where, key, lines):
    config = site(tmp_path, c=text)
    result = check(config)
    file = tmp_path / "connectors" / "c.yaml"
    assert_refused(result, file)
    assert f"{file}: {where}: key {key!r} appears twice (lines {lines[0]} and {lines[1]})" in result.problems


# --------------------------------------------------------------------------- 7. types


@pytest.mark.parametrize(("text", "field"), [
    ("redis: [redis://x]\n", "redis"),
    ("redis: {url: 6379}\n", "redis.url"),
    ("state_dir: [a, b]\n", "state_dir"),
    ("daemon: {max_parallel: !!binary aGVsbG8=}\n", "daemon.max_parallel"),
    ("daemon: {lease_ttl: !!timestamp 2001-12-14}\n", "daemon.lease_ttl"),
    ("daemon: {expected: !!python/object:os.system {}}\n", "daemon.expected"),
    ("log: {level: !!set {a}}\n", "log.level"),
    ("daemon: {expected: !!bool maybe}\n", "daemon.expected"),  # PyYAML's constructor raised KeyError
    ("daemon: {max_parallel: !!int '0x'}\n", "daemon.max_parallel"),
    ("metrics: {listen: 9464}\n", "metrics.listen"),
    ("queue: {name: 2024-01-01}\n", None),  # an unquoted date is the text, a fine queue name
    ("daemon: {max_parallel: 123456789012345678901234567890123456789012345}\n", "daemon.max_parallel"),
])
def test_wrong_types_are_named_by_field(tmp_path, text, field):
    config = site(tmp_path, text + "connectors_dir: connectors\n" if text.startswith("redis") else MAIN + text)
    result = check(config)
    if field is None:
        assert result.returncode == 0, result.stderr
        assert_bounded(result)
        return
    assert_refused(result, config)
    assert any(p.startswith(f"{config}: {field}: ") for p in result.problems), result.problems


# --------------------------------------------------------------------------- 8, 9. CLI


def test_dash_c_is_accepted_before_and_after_the_subcommand(tmp_path):
    good = site(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("nope: 1\n")
    assert run_cli("-c", str(good), "check").returncode == 0
    assert run_cli("check", "-c", str(good)).returncode == 0
    assert run_cli("--config", str(bad), "check", "--config", str(good)).returncode == 0  # the later one wins
    result = run_cli("-c", str(bad), "check")
    assert_refused(result, bad)


def test_health_exits_1_on_a_broken_configuration(tmp_path):
    config = site(tmp_path, MAIN + "daemon: {lease_ttl: .nan}\n")
    result = run_cli("health", "-c", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"unhealthy: {config}: daemon.lease_ttl: " in result.stdout


# --------------------------------------------------------------------------- 10. schema


def test_schema_describes_what_check_accepts(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from kmrl_sync.config.files import load_mapping
    from kmrl_sync.loading.schema import connector_schema, sync_schema

    main = json.loads(run_cli("schema").stdout)
    assert main == json.loads(json.dumps(sync_schema()))
    connector = connector_schema()
    for name in ("filesystem", "imap", "sharepoint"):
        one = connector_schema(name)
        assert one["properties"]["type"] == {"const": name, "title": "Type"}
        assert one["properties"]["options"]["$ref"] in (f"#/$defs/{d}" for d in one["$defs"])
    for path in [REPO / "sync.yaml", tmp_path / "sync.yaml"]:
        if path.parent == tmp_path:
            path.write_text("daemon: {lease_ttl: 90s, startup_jitter: 0}\nqueue: {format: stream}\n")
        jsonschema.validate(load_mapping(path, []), main)
    for path in sorted((REPO / "connectors").rglob("*.yaml")):
        jsonschema.validate(load_mapping(path, []), connector)
    for bad in ({"queu": {}}, {"daemon": {"lease_ttl": "soon"}}, {"log": {"level": "loud"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, main)
    with pytest.raises(jsonschema.ValidationError):  # the options of the type named by `type`
        jsonschema.validate({"type": "filesystem", "options": {"host": "x"}}, connector)
    result = run_cli("schema", "--connector", "ftp")
    assert result.returncode == 2 and "unknown connector type 'ftp'" in result.stderr
    imap = json.loads(run_cli("schema", "--connector", "imap").stdout)
    assert imap["title"] == "kmrl-sync connector file (type: imap)"


# --------------------------------------------------------------------------- 11. credentials


def test_an_unset_credentials_directory_names_the_way_out(tmp_path):
    config = site(tmp_path, 'redis: {url: "redis://127.0.0.1:1", password_file: "${CREDENTIALS_DIRECTORY}/kmrl_r"}\n')
    result = run_cli_without(config, "CREDENTIALS_DIRECTORY")
    assert_refused(result, config)
    assert "environment variable CREDENTIALS_DIRECTORY is not set" in result.stderr
    assert "sudo kmrl-sync" in result.stderr and "/usr/local/sbin/kmrl-sync" in result.stderr


def run_cli_without(config: Path, variable: str):
    saved = os.environ.pop(variable, None)
    try:
        return run_cli("check", "-c", str(config))
    finally:
        if saved is not None:
            os.environ[variable] = saved
