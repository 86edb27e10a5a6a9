"""Bad config is refused before anything runs: exit 2, `file: field: message`, nothing in Redis."""

from __future__ import annotations

import pytest

MAIN_OK = None  # keep the project's valid sync.yaml

# (case name, sync.yaml override or None, {connector file: body}, expected fragments in stderr)
CASES = [
    ("unknown key in sync.yaml", "redis: {url: embedded}\nqueu: {name: x}\n", {},
     ["sync.yaml: queu: unknown key"]),
    ("bad redis url", "redis: {url: 'http://localhost'}\n", {}, ["sync.yaml: redis.url: must be 'embedded'"]),
    ("bad queue format", "queue: {format: kafka}\n", {}, ["sync.yaml: queue.format:"]),
    ("missing password file", "redis: {url: 'redis://127.0.0.1:1', password_file: /nonexistent/pw}\n", {},
     ["sync.yaml: redis.password_file: secret file /nonexistent/pw does not exist"]),
    ("unset env var", "redis: {url: '${KMRL_TEST_UNSET_VAR}'}\n", {},
     ["sync.yaml: redis.url: environment variable KMRL_TEST_UNSET_VAR is not set"]),
    ("invalid yaml", "redis: [unclosed\n", {}, ["sync.yaml: line"]),
    ("unknown connector type", None, {"a.yaml": "type: ftp\n"}, ["a.yaml: type: unknown connector type 'ftp'"]),
    ("typo in connector key", None, {"b.yaml": "type: filesystem\nschedul: {every: 5m}\noptions: {root: /tmp}\n"},
     ["b.yaml: schedul: unknown key"]),
    ("bad duration", None, {"c.yaml": "type: filesystem\nschedule: {every: soon}\noptions: {root: /tmp}\n"},
     ["c.yaml: schedule.every:"]),
    ("both every and cron", None,
     {"d.yaml": "type: filesystem\nschedule: {every: 5m, cron: '* * * * *'}\noptions: {root: /tmp}\n"},
     ["d.yaml: schedule: give exactly one of 'every' or 'cron'"]),
    ("bad cron", None, {"e.yaml": "type: filesystem\nschedule: {cron: '99 * * * *'}\noptions: {root: /tmp}\n"},
     ["e.yaml: schedule:"]),
    ("bad priority", None, {"f.yaml": "type: filesystem\npriority: urgent\noptions: {root: /tmp}\n"},
     ["f.yaml: priority:"]),
    ("missing required option", None, {"g.yaml": "type: filesystem\noptions: {include: ['*']}\n"},
     ["g.yaml: options.root: Field required"]),
    ("unknown option", None, {"h.yaml": "type: filesystem\noptions: {root: /tmp, recursive: true}\n"},
     ["h.yaml: options.recursive: unknown key"]),
    ("option of the wrong type", None, {"i.yaml": "type: filesystem\noptions: {root: /tmp, follow_symlinks: maybe}\n"},
     ["i.yaml: options.follow_symlinks:"]),
    ("duplicate connector name", None,
     {"j.yaml": "type: filesystem\noptions: {root: /tmp}\n",
      "k.yaml": "name: j\ntype: filesystem\noptions: {root: /tmp}\n"},
     ["k.yaml: name: connector 'j' is already defined"]),
    ("not a mapping", None, {"l.yaml": "- type: filesystem\n"}, ["l.yaml: (top level): expected a mapping"]),
    ("bad queue override", None,
     {"m.yaml": "type: filesystem\nqueue: {format: celery, nme: x}\noptions: {root: /tmp}\n"},
     ["m.yaml: queue.nme: unknown key"]),
]


@pytest.mark.parametrize(("case", "main", "connectors", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_refused(project, redis_client, case, main, connectors, expected):
    if main is not None:
        project.config.write_text(
            main if "redis:" in main else f"redis: {{url: '{project.redis_url}'}}\n{main}")
    for name, body in connectors.items():
        (project.root / "connectors" / name).write_text(body)
    for command in (["sync", "--all"], ["check"], ["status"]):
        result = project.cli(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        for fragment in expected:
            assert fragment in result.stderr, (fragment, result.stderr)
    assert redis_client.dbsize() == 0


def test_every_problem_is_listed_at_once(project, redis_client):
    (project.root / "connectors" / "a.yaml").write_text("type: filesystem\noptions: {root: /tmp, bogus: 1}\n")
    (project.root / "connectors" / "b.yaml").write_text("type: nope\n")
    result = project.cli("check")
    assert result.returncode == 2
    assert "a.yaml: options.bogus: unknown key" in result.stderr
    assert "b.yaml: type: unknown connector type 'nope'" in result.stderr


def test_secrets_never_appear_in_errors_or_status(project, tmp_path, redis_client, redis_server):
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cr3t-value\n")
    project.config.write_text(
        f"redis: {{url: 'redis://:inline-s3cr3t@127.0.0.1:{redis_server.port}/0'}}\nconnectors_dir: connectors\n")
    result = project.cli("status", "--json")
    assert "inline-s3cr3t" not in result.stdout + result.stderr
    assert "***" in result.stdout


def test_env_interpolation_and_password_file(project, tmp_path, redis_server):
    pw = tmp_path / "pw"
    pw.write_text("unused-by-a-passwordless-server\n")
    project.config.write_text(
        "redis: {url: '${KMRL_TEST_REDIS_URL}', password_file: ../pw}\nconnectors_dir: ${KMRL_TEST_DIR:-connectors}\n")
    result = project.cli("check", env={"KMRL_TEST_REDIS_URL": redis_server.url})
    assert result.returncode == 0, result.stderr
