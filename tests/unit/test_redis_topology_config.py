"""`redis.sentinel`, `redis.cluster` and `redis.replicas_to_ack`: what the configuration accepts, and
the clear refusals (file and field named) of what cannot work."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kmrl_sync import redaction
from kmrl_sync.cli.main import main
from kmrl_sync.loading.loader import ConfigError, load_config


def _write(root: Path, redis_block: str, queue: str = "{format: stream}", connector: str = "") -> Path:
    (root / "connectors").mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    config = root / "sync.yaml"
    config.write_text(f"redis:\n{textwrap.indent(textwrap.dedent(redis_block), '  ')}queue: {queue}\n"
                      "connectors_dir: connectors\n")
    (root / "connectors" / "docs.yaml").write_text(f"type: filesystem\noptions: {{root: {root / 'docs'}}}\n{connector}")
    return config


def _problems(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return caught.value.problems


def test_sentinel_is_read_with_both_passwords_registered_as_secrets(tmp_path):
    (tmp_path / "redis.pw").write_text("the-master-password-123\n")
    (tmp_path / "sentinel.pw").write_text("the-sentinel-password-456\n")
    config = load_config(_write(tmp_path, """\
        sentinel: {hosts: ["127.0.0.1:26379", "[::1]:26380"], service: kmrl, password_file: sentinel.pw}
        password_file: redis.pw
        replicas_to_ack: 1
        """))
    assert config.redis_sentinel is not None
    assert config.redis_sentinel.hosts == (("127.0.0.1", 26379), ("::1", 26380))
    assert config.redis_sentinel.service == "kmrl"
    assert config.replicas_to_ack == 1
    assert config.redis_url == "sentinel://127.0.0.1:26379,[::1]:26380/kmrl"
    said = redaction.redact("the-master-password-123 the-sentinel-password-456")
    assert "the-master-password-123" not in said and "the-sentinel-password-456" not in said


@pytest.mark.parametrize(("block", "expected"), [
    ('url: "redis://127.0.0.1:6380/0"\nsentinel: {hosts: ["h:26379"], service: kmrl}\n',
     "redis: give either url or sentinel, not both"),
    ('sentinel: {hosts: ["h:26379"], service: kmrl}\ncluster: true\n', "redis: cluster and sentinel exclude"),
    ("cluster: true\n", "redis: cluster: true needs url to name a node"),
    ("replicas_to_ack: 1\n", "redis: replicas_to_ack needs a Redis with replicas"),
    ('url: "redis://127.0.0.1:7000/0"\ncluster: true\nreplicas_to_ack: 1\n',
     "redis: replicas_to_ack is not supported with cluster: true"),
    ('sentinel: {hosts: ["h"], service: kmrl}\n', "redis.sentinel.hosts.0: 'h' is not host:port"),
    ('sentinel: {hosts: [], service: kmrl}\n', "redis.sentinel.hosts:"),
    ('sentinel: {hosts: ["h:1"]}\n', "redis.sentinel.service: Field required"),
    ('sentinel: {hosts: ["h:1"], service: kmrl, password_file: nope.pw}\n',
     "redis.sentinel.password_file: secret file"),
    ("replicas_to_ack: -1\n", "redis.replicas_to_ack:"),
])
def test_impossible_combinations_are_refused_naming_file_and_field(tmp_path, block, expected):
    config = _write(tmp_path, block)
    problems = _problems(config)
    assert any(p.startswith(f"{config}: {expected}") for p in problems), problems


@pytest.mark.parametrize(("queue", "connector", "where"), [
    ("{format: celery}", "", "sync.yaml"),
    ("{format: list}", "", "sync.yaml"),
    ("{format: stream}", "queue: {format: list}\n", "docs.yaml"),
    ("{format: stream}", "queue: {format: celery}\n", "docs.yaml"),
])
def test_check_refuses_celery_and_list_on_a_cluster_without_connecting(tmp_path, capsys, queue, connector, where):
    config = _write(tmp_path, 'url: "redis://127.0.0.1:1/0"\ncluster: true\n', queue=queue, connector=connector)
    with pytest.raises(SystemExit) as exited:  # nothing listens on port 1: no connection was tried
        main(["check", "-c", str(config)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{where}: queue.format:" in err
    assert "cannot be used on the Redis Cluster at redis://127.0.0.1:1/0 (redis.cluster: true)" in err


def test_a_cluster_with_stream_queues_passes_check(tmp_path, capsys):
    config = _write(tmp_path, 'url: "redis://127.0.0.1:1/0"\ncluster: true\n')
    assert main(["check", "-c", str(config)]) == 0, capsys.readouterr()
