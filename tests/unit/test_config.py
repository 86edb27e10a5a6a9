"""Config parsing without any service: durations, interpolation, secrets, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmrl_sync.config.models import parse_duration
from kmrl_sync.loading.loader import ConfigError, find_config_path, interpolate, load_config


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400),
                                               ("250ms", 0.25), (12, 12), ("1.5m", 90), (" 2 m ", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "-1s", "0", 0, True, "m"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_interpolation_defaults_escapes_and_missing():
    problems: list[str] = []
    env = {"HOST": "redis.local"}
    value = interpolate({"a": "redis://${HOST}:${PORT:-6379}", "b": ["$${HOST}", "${NOPE}"]}, "", problems, env, "f")
    assert value == {"a": "redis://redis.local:6379", "b": ["${HOST}", ""]}
    assert problems == ["f: b[1]: environment variable NOPE is not set"]


def write(tmp: Path, main: str, **connectors: str) -> Path:
    (tmp / "connectors").mkdir(exist_ok=True)
    (tmp / "sync.yaml").write_text(main)
    for name, body in connectors.items():
        (tmp / "connectors" / f"{name}.yaml").write_text(body)
    return tmp / "sync.yaml"


def test_paths_are_relative_to_their_files(tmp_path):
    path = write(tmp_path, "state_dir: st\nblobs: {path: b}\n",
                 docs="type: filesystem\noptions: {root: ../data}\nqueue: {format: list}\n")
    config = load_config(path)
    assert config.state_dir == tmp_path / "st" and config.blobs.folder == tmp_path / "b"
    docs = config.connectors["docs"]
    assert docs.options.root == tmp_path / "connectors" / "../data"
    assert docs.queue.format == "list" and docs.queue.name == "document_processing"
    assert docs.schedule.every == 300 and docs.priority == "normal" and docs.enabled


def test_blobs_url_a_folder_or_a_bucket_with_its_key_files(tmp_path):
    assert load_config(write(tmp_path, "blobs: {url: b}\n")).blobs.folder == tmp_path / "b"
    assert load_config(write(tmp_path, "state_dir: st\n")).blobs.folder == tmp_path / "st" / "blobs"
    (tmp_path / "ak").write_text("AKIAEXAMPLE\n")
    (tmp_path / "sk").write_text("wJalrXUtnFEMI/K7MDENG\n")
    config = load_config(write(tmp_path, "blobs: {url: 's3://docs-bucket/kmrl/prod/', endpoint_url: 'http://minio:9000',"
                                         " region: eu-west-1, access_key_file: ak, secret_key_file: sk}\n"))
    blobs = config.blobs
    assert (blobs.folder, blobs.bucket, blobs.prefix, blobs.region) == (None, "docs-bucket", "kmrl/prod", "eu-west-1")
    assert blobs.url == "s3://docs-bucket/kmrl/prod" and blobs.endpoint_url == "http://minio:9000"
    assert blobs.secret_access_key.get_secret_value() == "wJalrXUtnFEMI/K7MDENG"
    assert "wJalrXUtnFEMI" not in repr(config)
    from kmrl_sync import redaction

    assert "wJalrXUtnFEMI/K7MDENG" not in redaction.redact("the key wJalrXUtnFEMI/K7MDENG leaked")


@pytest.mark.parametrize(("blobs", "problem"), [
    ("{url: 'http://x/y'}", "sync.yaml: blobs.url: must be a folder path or s3://bucket/prefix"),
    ("{url: 's3://Bad_Bucket/p'}", "is not an S3 bucket name"),
    ("{url: b, path: c}", "give url or path (its older name), not both"),
    ("{url: b, region: eu-west-1}", "region: only for an S3 store"),
    ("{url: 's3://bucket-x', endpoint_url: 'minio:9000'}",
     "sync.yaml: blobs.endpoint_url: must be an http:// or https:// URL"),
    ("{url: 's3://bucket-x', secret_key_file: sk}", "access_key_file and secret_key_file go together"),
    ("{url: 's3://bucket-x', access_key_file: nope, secret_key_file: nope}",
     "blobs.access_key_file: secret file"),
])
def test_bad_blobs_settings_are_refused_naming_the_field(tmp_path, blobs, problem):
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, f"blobs: {blobs}\n"))
    assert problem in str(refused.value)


def test_password_file_is_read_and_hidden(tmp_path):
    (tmp_path / "pw").write_text("hunter2\n")
    config = load_config(write(tmp_path, "redis: {url: 'redis://h', password_file: pw}\n"))
    assert config.redis_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config)


def test_all_problems_are_collected(tmp_path):
    path = write(tmp_path, "log: {level: loud}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any("log.level" in p for p in err.value.problems)


def test_config_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("KMRL_SYNC_CONFIG", str(tmp_path / "x.yaml"))
    assert find_config_path(None) == tmp_path / "x.yaml"
    assert find_config_path("given.yaml") == Path("given.yaml")
    monkeypatch.delenv("KMRL_SYNC_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert find_config_path(None) in (Path("/etc/kmrl-sync/sync.yaml"), Path("sync.yaml"))


def test_cron_schedule_is_parsed_by_apscheduler(tmp_path):
    body = "type: filesystem\nschedule: {cron: '*/10 * * * *'}\noptions: {root: .}\n"
    config = load_config(write(tmp_path, "", a=body))
    assert config.connectors["a"].schedule.cron == "*/10 * * * *"


def test_the_shipped_examples_are_valid(tmp_path):
    """connectors/examples/*.yaml must load (their secret files are faked here)."""
    from tests.conftest import REPO

    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("ops-mailbox", "graph"):
        (creds / name).write_text("secret\n")
    (tmp_path / "sync.yaml").write_text(f"connectors_dir: {REPO / 'connectors' / 'examples'}\n")
    config = load_config(tmp_path / "sync.yaml", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert set(config.connectors) == {"shared-drive", "ops-mailbox", "engineering-sharepoint"}
    assert load_config(REPO / "sync.yaml").connectors.keys() == {"sample-docs"}


@pytest.mark.parametrize("name", ["a:b", "a{b}", "{x}", "ends\n", "-lead"])
def test_connector_names_that_would_break_a_document_hash_s_hash_tag_are_refused(tmp_path, name):
    """The document hash `<prefix>:doc:{<connector>}:<id>` needs the name free of ':' and braces
    (and of a final newline, which `$` in the pattern let through)."""
    path = write(tmp_path, "", docs=f"type: filesystem\nname: {name!r}\noptions: {{root: .}}\n".replace("'", '"'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(": name: " in p for p in err.value.problems), err.value.problems
