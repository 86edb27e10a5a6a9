"""Untrusted text is data: shown escaped, never obeyed as markup or terminal control.

The finding: a file named `a[/b].bin` made `kmrl-sync status` crash (rich.errors.MarkupError) for
every connector, and names could restyle the output or carry terminal escape sequences. The class:
any text from a source or from Redis (file names, subjects, server errors, holders, cursors,
`last_error`) printed by status, queue, sync's summary, check, health or the console log.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from kmrl_sync import logs
from kmrl_sync.cli import main as cli
from kmrl_sync.cli.queueview import show_queues
from kmrl_sync.daemon.status import collect_status, render_status
from kmrl_sync.display import visible

UNSAFE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours rich itself writes on a terminal

HOSTILE_PIECES = [
    "[", "]", "[/]", "[/b]", "[bold red]", "[link=http://evil.example]", ":warning:", ":smile:", "\\", "\\[",
    "\x1b", "\x1b[31m", "\x1b[2J", "\x1b]8;;http://evil.example\x1b\\", "\x1b]0;title\x07", "\x07", "\r", "\n",
    "\t", "\x08", "\x7f", "\x9b", "\x9d", "\u202e", "\u202d", "\u2066", "\u2069", "\u200f", "\u200b", "\ufeff",
    "\u2028", "\u2029", "\u00ad", "é", "漢字", "🙂", "%s", "{x}", "' \"",
]
hostile = st.lists(st.sampled_from(HOSTILE_PIECES) | st.text(max_size=3), min_size=1, max_size=6).map("".join)
# a file name: no '/', no NUL, not '.' or '..', at most 255 bytes, no surrogates (those cannot be UTF-8)
file_names = hostile.map(lambda s: s.replace("/", "_").replace("\0", "_")).filter(
    lambda s: s not in ("", ".", "..") and len(s.encode("utf-8", "surrogatepass")) <= 200
    and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


def assert_safe(output: str) -> None:
    """Nothing in `output` can steer a terminal: after rich's own colours, no control, format,
    surrogate or separator character is left but the line breaks."""
    rest = SGR.sub("", output)
    bad = sorted({c for c in rest if c != "\n" and unicodedata.category(c) in UNSAFE})
    assert not bad, f"unsafe characters {bad!r} in {output!r}"


def render(report: dict, *, width: int, terminal: bool) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system="truecolor" if terminal else None)
    render_status(report, console=console)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the finding


def test_a_file_named_like_markup_does_not_break_status(project, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a[").mkdir()
    (docs / "a[/b].bin").write_bytes(b"too large")  # the document a[/b].bin: the file b].bin in a folder a[
    (docs / "fine.txt").write_bytes(b"x")
    project.filesystem("fs", docs, "max_file_mb: 0.000001\n")  # 1 byte: a[/b].bin fails, with its name
    sync = project.cli("sync", "fs")
    assert sync.returncode == 1 and "fs:a[/b].bin: larger than max_file_mb" in sync.stdout
    for columns in ("80", "120", "250"):
        status = project.cli("status", env={"COLUMNS": columns})
        assert status.returncode == 0, status.stderr
        assert "fs: last error: fs:a[/b].bin: larger than max_file_mb" in status.stdout.replace("\n", "")
        assert "Traceback" not in status.stderr
    report = json.loads(project.cli("status", "--json", check=True).stdout)
    assert report["connectors"][0]["last_error"].startswith("fs:a[/b].bin: ")


# --------------------------------------------------------------------------- the class, end to end


@pytest.fixture
def hostile_project(project, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    project.filesystem("fs", docs, "max_file_mb: 0.000001\nhash_workers: 0\n")
    from kmrl_sync.loading.loader import load_config

    config = load_config(project.config)
    return project, docs, config, project.engine()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=file_names)
def test_hostile_file_names_are_shown_escaped_everywhere(hostile_project, redis_client, capsys, name):
    _project, docs, config, engine = hostile_project
    redis_client.flushall()
    for old in docs.iterdir():
        old.unlink()
    (docs / name).write_bytes(b"too large")  # fails (max 1 byte): its name goes into errors and last_error
    (docs / f"ok-{name}"[:200]).write_bytes(b"x")  # is queued: its id goes into the queue
    summary = engine.run("fs")
    assert summary.failed == 1 and summary.created == 1, summary
    failure = f"fs:{name}: larger than max_file_mb (9 bytes)"

    # sync's summary, as text and as JSON
    capsys.readouterr()
    cli._print_summaries([summary], config, as_json=False)
    out = capsys.readouterr().out
    assert_safe(out)
    assert f"  failed: {visible(failure)}\n" in out
    cli._print_summaries([summary], config, as_json=True)
    assert json.loads(capsys.readouterr().out)[0]["failures"] == [failure]  # JSON: the exact data

    # status, on a terminal and not, narrow and wide; and status --json
    report = collect_status(config)
    for width in (80, 120, 2000):
        for terminal in (False, True):
            shown = render(report, width=width, terminal=terminal)
            assert_safe(shown)
            if width == 2000:
                assert visible(f"fs: last error: {failure}") in SGR.sub("", shown)
    assert json.loads(json.dumps(report, default=str))["connectors"][0]["last_error"] == failure

    # queue
    show_queues(engine, limit=10)
    out = capsys.readouterr().out
    assert_safe(out)
    assert visible(repr(f"fs:ok-{name}"[:203])) in out


def _text_everywhere(value: str) -> dict:
    """A status report with `value` in every field that comes from Redis, a source or the config."""
    lease = {"host": value, "pid": 7, "run_id": value, "since": value, "ttl_ms": 1000, "boot_id": value,
             "pid_namespace": 1, "process_start": 2}
    connector = {"name": value, "type": value, "enabled": True, "schedule": value, "file": value,
                 "known_documents": 3, "cursor": value, "next_run": value, "lag_seconds": 5.0,
                 "last_run": {"finished": value, "result": value, "created": 1, "updated": 0, "deleted": 0,
                              "unchanged": 0, "failed": 0, "seconds": 0.5},
                 "last_success": value, "failing_since": value, "last_error": value, "totals": {}, "lease": lease}
    daemon = {"id": value, "host": value, "pid": 9, "started": value, "beat": value, "connectors": [value],
              "alive": False}
    return {"config": value, "redis": {"ok": True, "url": value, "version": value, "used_memory": value,
                                       "maxmemory": value, "maxmemory_policy": value, "connected_clients": 1},
            "connectors": [connector, {**connector, "lease": None, "last_run": {}}], "daemons": [daemon]}


@settings(max_examples=200, deadline=None)
@given(value=hostile.filter(bool), width=st.sampled_from([40, 80, 120, 250]), terminal=st.booleans())
def test_every_status_field_is_rendered_as_data(value, width, terminal):
    report = _text_everywhere(value)
    shown = render(report, width=width, terminal=terminal)
    assert_safe(shown)
    wide = SGR.sub("", render(report, width=5000, terminal=terminal))
    for line in (f"{value}: last error: {value}", f"daemon {value}:9 "):
        assert visible(line).strip() in wide
    unreachable = render({"redis": {"ok": False, "url": value, "error": value}, "connectors": []},
                         width=width, terminal=terminal)
    assert_safe(unreachable)


@settings(max_examples=100, deadline=None)
@given(value=hostile)
def test_the_console_log_shows_values_escaped_and_json_logs_keep_them_exact(value):
    for fmt in ("console", "json"):
        stream = io.StringIO()
        logs.configure("info", fmt, stream=stream)
        log = logs.structlog.get_logger("test")
        log.warning("document failed", document=value, error=value)
        try:
            raise ValueError(value)
        except ValueError:
            log.exception("run crashed")
        out = stream.getvalue()
        if fmt == "console":
            assert_safe(out)
            assert "document=" in out and "ValueError" in out  # shown (quoted or not), escaped
        else:
            first = json.loads(out.splitlines()[0])
            assert first["document"] == value and first["error"] == value
            assert all(c == "\n" or unicodedata.category(c) not in UNSAFE for c in out)
    logs.configure("warning", "json")


def test_visible_is_identity_on_ordinary_text_and_escapes_the_rest():
    assert visible("Quarterly report \u2013 Q3 [v2].pdf") == "Quarterly report \u2013 Q3 [v2].pdf"  # en dash
    assert visible("漢字 🙂 é\u00a0x") == "漢字 🙂 é\u00a0x"
    assert visible("a\x1b[31mb\u202ec\r\n\x07\udcff") == "a\\x1b[31mb\\u202ec\\r\\n\\x07\\udcff"


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` provides the pseudo-terminal")
def test_a_sync_on_a_terminal_prints_hostile_names_escaped(project, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    evil = "a[\x1b[31m/b]\x1b]8;;evil.example\x07click\x1b]8;;\x07\u202egnp.exe\x07:warning:"  # a folder a[...
    (docs / evil).parent.mkdir()
    (docs / evil).write_bytes(b"too large")
    project.filesystem("fs", docs, "max_file_mb: 0.000001\n")
    command = f"{sys.executable} -m kmrl_sync sync fs -c {project.config}"
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, cwd=project.root,
                            timeout=120, env={**os.environ, "TERM": "xterm", "COLUMNS": "80"})
    out = result.stdout.decode("utf-8", "replace")
    assert "fs: partial" in out, out
    assert visible(f"fs:{evil}") in out
    for raw in ("\x1b]8;", "\u202e", "\x07"):  # rich's progress display never writes these itself
        assert raw not in out


def test_check_and_health_show_server_errors_escaped(project, tmp_path):
    """An error text from a source (here: a root folder whose name carries escapes) is data."""
    evil = tmp_path / "gone\x1b[2J\u202e"
    project.filesystem("fs", evil)
    with contextlib.suppress(FileNotFoundError):
        evil.rmdir()
    for args in (("check", "--connect"), ("health",)):
        result = project.cli(*args)
        assert_safe(result.stdout + result.stderr)
