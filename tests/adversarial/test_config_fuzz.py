"""Issue 15, the class of "config loading is not bounded": generated hostile YAML, every kind at once.

Hypothesis writes sync.yaml and a connector file from the real keys of the configuration and from
what breaks loaders: aliases and anchors, deep nesting, `.nan`/`.inf`/huge numbers, `!!binary`,
timestamps, `!!python/object` and other tags, nulls, repeated keys, control characters, bytes that
are not UTF-8, `${VAR}` interpolation. Whatever it writes, the loader either loads it or refuses
it with `file: ...` problems, never anything else, within the time and memory bounds; a sample goes
through `kmrl-sync check` as a subprocess, which must exit 0 or 2, print no traceback and stay
under the peak-memory bound.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial.support import PEAK_RSS_BOUND_MB, TIME_BOUND_S, run_cli

MAIN_KEYS = ["redis", "url", "password_file", "key_prefix", "state_dir", "blobs", "path", "queue", "format", "name",
             "task", "delete_task", "connectors_dir", "log", "level", "metrics", "listen", "daemon", "lease_ttl",
             "heartbeat_ttl", "alert_after", "startup_jitter", "max_parallel", "expected"]
CONNECTOR_KEYS = ["name", "type", "enabled", "schedule", "every", "cron", "department", "priority", "queue", "options",
                  "root", "include", "exclude", "follow_symlinks", "min_age", "snapshot", "max_file_mb", "watch",
                  "hash_workers", "host", "port", "tls", "username", "password", "password_file", "folders",
                  "timeout", "batch_size", "idle", "max_attachment_mb", "tenant_id", "client_id", "client_secret",
                  "site_url", "max_requests_per_second", "max_throttle_wait", "certificate", "key_file"]

ODD_SCALARS = [
    ".nan", ".NaN", ".inf", "-.inf", "+.inf", "1.0e+30", "1e30", "-1", "0", "0.0", "1.0e-300", "0x7fffffffffffffff",
    "1" * 45, "9" * 5000, "0o777", "190:20:30", "1_000", "~", "null", "Null", "", "yes", "no", "on", "off", "y", "n",
    "true", "!!binary aGVsbG8=", "!!binary", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "!!timestamp 2001-12-14",
    "!!python/object:os.system {}", "!!python/name:os.system", "!!python/object/apply:os.system [echo]",
    "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]", "!!str 5", "!!int '5'", "!!float x", "!!bool maybe",
    "!local x", "!<tag:example.com:x> y", '"\\0"', '"a\\x00b"', '"\\e[31mred\\e[0m"', '"\\x9b2J"', '"\\ud800"',
    '"\\t\\n\\r"', '"\\u2028"', "'quoted'", "'${HOME}'", "'${KMRL_FUZZ_UNSET}'", "'${KMRL_FUZZ_BAD}'",
    "'${KMRL_FUZZ_BIG}${KMRL_FUZZ_BIG}'", "'$$'", "5m", "30s", "250ms", "1d", "366d", "367d", "0s", "-5s", "'1 m'",
    "embedded", "redis://127.0.0.1:1", "http://x", "filesystem", "imap", "sharepoint", "celery", "stream", "list",
    "kmrl", "kmrl:connectors", "'kmrl:{a}:cursor'", "_kombu.binding.x", "unacked", "/tmp", "/dev/zero",
    "/etc/passwd", "'*/5 * * * *'", "'99 * * * *'", "'**/*'", "'**/a/**/b/**/c/**/d'", "'['", "<<", "=", "?", "|",
    ">", "-", "@x", "`x`", "%x", "&anchor x", "*anchor", "*undefined", "[]", "{}", "[[[[]]]]",
]
ENV = {"KMRL_FUZZ_BAD": "x\x1by", "KMRL_FUZZ_BIG": "b" * 100_000}

keys = st.sampled_from(MAIN_KEYS + CONNECTOR_KEYS) | st.sampled_from(ODD_SCALARS) | st.text(max_size=8).map(json.dumps)
scalars = (st.sampled_from(ODD_SCALARS) | st.integers().map(str) | st.floats().map(repr)
           | st.text(max_size=20).map(json.dumps) | st.binary(max_size=8).map(lambda b: b.decode("latin-1")))


def _flow_map(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
                      | st.lists(st.tuples(keys, children), max_size=4).map(_flow_map)
                      | st.tuples(st.sampled_from(["&a ", "&b ", "!!map ", "!!seq ", "!!str ", ""]), children)
                      .map("".join)),
    max_leaves=12,
)
deep = st.sampled_from([10, 49, 50, 51, 200, 5000]).map(lambda n: "[" * n + "]" * n)
laughs = st.just("&a [x, x, x, x, x, x, x, x]").map(
    lambda first: first + "".join(f", &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                  for p, c in zip("abcdefg", "bcdefgh", strict=True)))


def _document(pairs: list[tuple[str, str]], block: bool) -> str:
    if block:
        return "".join(f"{k}:\n  {v}\n" if v.startswith(("- ", "? ")) else f"{k}: {v}\n" for k, v in pairs)
    return _flow_map(pairs) + "\n"


def documents(real_keys: list[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(st.sampled_from(real_keys) | keys, values | deep | laughs.map(lambda x: "[" + x + "]"))
    structured = st.builds(_document, st.lists(pair, max_size=8), st.booleans())
    raw = st.sampled_from(["", "---\n---\n", "--- a\n... \n", "- a\n", "!!binary aGk=\n", "%YAML 1.1\n---\na: 1\n",
                           "a: b: c\n", "a:\n\t- b\n", "\ufeffa: 1\n", "? [a]\n: 1\n", "a: 1\n" * 3, "&x a: *x\n",
                           "a: !!python/object/new:os.system [ls]\n", "\x00", "\x85a: 1\n", "{" * 3000])
    return structured | raw | st.binary(max_size=64).map(lambda b: b.decode("latin-1"))


CONNECTOR_PREFIXES = ["", "type: filesystem\n", "type: imap\n", "type: sharepoint\n",
                      "type: filesystem\noptions: {root: /tmp}\n"]
hostile_sites = st.tuples(documents(MAIN_KEYS), st.sampled_from(CONNECTOR_PREFIXES), documents(CONNECTOR_KEYS),
                          st.sampled_from(["utf-8", "latin-1", "utf-16"]))

# Near-valid sites: a configuration that loads, with a few fields set to plausible or odd values, so
# the generated values also reach the field validators and the connector types' options.
PLAUSIBLE = ["5m", "30s", "1", "0", "2", "true", "false", "null", "/tmp", "connectors", "filesystem", "imap", "info",
             "json", "list", "stream", "'127.0.0.1:9464'", "'x@example.org'", "[INBOX]", "['**/*.pdf']", "[]",
             "'https://x.example/sites/a'", "h", "p", "'*/5 * * * *'", "200", "993", "kmrl2", "docs", "high"]
MAIN_SECTIONS = {
    "redis": ["key_prefix", "password_file"], "queue": ["format", "name", "task", "delete_task"],
    "log": ["level", "format"], "metrics": ["listen"], "blobs": ["path"],
    "daemon": ["lease_ttl", "heartbeat_ttl", "alert_after", "startup_jitter", "max_parallel", "expected"],
}
CONNECTOR_TOP = ["schedule", "department", "priority", "enabled", "name", "queue"]
OPTIONS = {
    "filesystem": ({"root": "/tmp"}, ["root", "include", "exclude", "follow_symlinks", "min_age", "snapshot",
                                      "max_file_mb", "watch", "hash_workers"]),
    "imap": ({"host": "h", "username": "u", "password": "p"},
             ["port", "tls", "starttls", "tls_verify", "ca_file", "username", "password", "password_file", "folders",
              "exclude", "attachments", "max_attachment_mb", "propagate_deletes", "idle", "batch_size", "timeout"]),
    "sharepoint": ({"tenant_id": "t", "client_id": "c", "client_secret": "s", "site_url": "'https://x.example/s/a'"},
                   ["library", "folder", "include", "exclude", "max_file_mb", "graph_url", "download_content",
                    "max_requests_per_second", "download_concurrency", "page_size", "timeout", "max_throttle_wait",
                    "certificate", "client_secret_file"]),
}
near_values = st.sampled_from(PLAUSIBLE) | scalars | values


def _flow(mapping: dict[str, str]) -> str:
    return _flow_map(list(mapping.items()))


@st.composite
def near_valid_sites(draw: st.DrawFn) -> tuple[str, str, str, str]:
    sections: dict[str, dict[str, str]] = {"redis": {"url": '"redis://127.0.0.1:1"'}}
    for section, key in draw(st.lists(st.sampled_from([(s, k) for s, ks in MAIN_SECTIONS.items() for k in ks]),
                                      max_size=3)):
        sections.setdefault(section, {})[key] = draw(near_values)
    main = "".join(f"{section}: {_flow(fields)}\n" for section, fields in sections.items())
    kind = draw(st.sampled_from(sorted(OPTIONS)))
    base, option_keys = OPTIONS[kind]
    options = dict(base)
    for key in draw(st.lists(st.sampled_from(option_keys), max_size=3)):
        options[key] = draw(near_values)
    top = {key: draw(near_values) for key in draw(st.lists(st.sampled_from(CONNECTOR_TOP), max_size=2, unique=True))}
    if "schedule" in top and draw(st.booleans()):
        top["schedule"] = _flow({draw(st.sampled_from(["every", "cron"])): draw(near_values)})
    connector = f"type: {kind}\n" + "".join(f"{k}: {v}\n" for k, v in top.items()) + f"options: {_flow(options)}\n"
    return main, "", connector, "utf-8"


sites = hostile_sites | near_valid_sites()


def _write(folder: Path, site: tuple[str, str, str, str]) -> tuple[Path, Path]:
    main, prefix, connector, encoding = site
    (folder / "connectors").mkdir()
    config, file = folder / "sync.yaml", folder / "connectors" / "c.yaml"
    config.write_bytes(main.encode("utf-8", "surrogatepass"))
    body = prefix + connector
    file.write_bytes(body.encode(encoding, "replace") if encoding != "utf-8" else body.encode("utf-8", "surrogatepass"))
    return config, file


PROBLEM = re.compile(r"^(?P<file>/[^:]+): (?P<rest>.+)$")


def _assert_shaped(problems: list[str], *files: Path) -> None:
    assert problems
    for problem in problems:
        match = PROBLEM.match(problem)
        assert match and match.group("file") in {str(f) for f in files}, problem
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]", problem), problem


@settings(max_examples=200, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sites)
def test_generated_configs_load_or_are_refused_in_bounds(site):
    """The loader itself, in this process: ConfigError with `file: ...` lines, or a Config."""
    from kmrl_sync.config.models import Config
    from kmrl_sync.loading.loader import ConfigError, load_config

    with tempfile.TemporaryDirectory() as tmp:
        config, file = _write(Path(tmp), site)
        tracemalloc.start()
        started = time.monotonic()
        try:
            loaded = load_config(config, env={**os.environ, **ENV})
        except ConfigError as exc:
            _assert_shaped(exc.problems, config, file)
        else:
            assert isinstance(loaded, Config)
        finally:
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert elapsed < TIME_BOUND_S, elapsed
        assert peak < PEAK_RSS_BOUND_MB * 1024 * 1024, peak


@settings(max_examples=10, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sites)
def test_generated_configs_through_kmrl_sync_check(site):
    """A sample through the real command: exit 0 or 2, `file: ...` lines, no traceback, bounded."""
    with tempfile.TemporaryDirectory() as tmp:
        config, file = _write(Path(tmp), site)
        started = time.monotonic()
        result = run_cli("check", "-c", str(config), env=ENV)
        elapsed = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 2), (result.returncode, result.stderr)
    if result.returncode == 2:
        assert result.stderr.startswith("configuration is invalid:\n"), result.stderr
        _assert_shaped([p for p in result.problems if not p.startswith("... and ")], config, file)
    assert result.peak_rss_mb is not None and result.peak_rss_mb < PEAK_RSS_BOUND_MB, result.peak_rss_mb
    assert elapsed < TIME_BOUND_S, elapsed
