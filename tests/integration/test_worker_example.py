"""The README's worker example, run as written: a real Celery worker (prefork, as `celery -A tasks
worker` starts it) in a folder of its own, configured the way a user would (CELERY_BROKER_URL,
KMRL_SYNC_CONFIG and a sync.yaml holding only Redis and the store), after a real sync.

The code is taken from README.md at test time, so the test fails as soon as the README's example
stops working (the finding: its first task failed with `'DisabledBackend' object has no attribute
'client'`, because it read Redis through the result backend's connection).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def readme_worker_example() -> str:
    """The first python block of the README's "The worker side" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## The worker side\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no python block in 'The worker side'"
    return match.group(1)


def readme_worker_command() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## The worker side\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(celery [^\n]*)\n```", section)
    assert match, "README.md: no `celery ... worker` command in 'The worker side'"
    return match.group(1).split()


@pytest.fixture(params=["folder", "s3-encrypted"])
def store_settings(request, project, tmp_path) -> str:
    """The project's store and encryption, as the `blobs:` / `encryption:` part of a sync.yaml: a
    folder in the clear, or a bucket on moto's S3 server with the content encrypted."""
    if request.param == "folder":
        return f"blobs: {{path: {project.root / 'state' / 'blobs'}}}\n"
    server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    key_file = tmp_path / "keys.json"
    subprocess.run([sys.executable, "-m", "kmrl_sync", "keys", "new", str(key_file)], check=True, capture_output=True)
    settings = server.blobs_yaml(bucket, tmp_path / "s3-secrets") + f"encryption: {{key_file: {key_file}}}\n"
    project.write_main(settings)
    return settings


@pytest.fixture
def example_worker(tmp_path, redis_server, project, store_settings):
    """Start the README's worker; yields a function returning what its tasks logged so far."""
    folder = tmp_path / "worker"
    folder.mkdir()
    (folder / "tasks.py").write_text(readme_worker_example(), encoding="utf-8")
    # What a worker host is given: where Redis and the store are, the key file. No connectors/, no state_dir.
    (folder / "sync.yaml").write_text(f'redis: {{url: "{redis_server.url}", key_prefix: kmrl}}\n' + store_settings)
    log = folder / "worker.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KMRL_SYNC_CONFIG")}
    env.update(CELERY_BROKER_URL=redis_server.url, KMRL_SYNC_CONFIG=str(folder / "sync.yaml"))
    command = readme_worker_command()
    assert command[:2] == ["celery", "-A"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *command, "--loglevel", "info", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)

    def logged() -> list[str]:
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited {proc.returncode}:\n{log.read_text()}")
        return re.findall(r"(?:process|delete)_document [^\n]*", log.read_text(errors="replace"))

    logged.log = log  # type: ignore[attr-defined]
    yield logged
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_readme_worker_reads_each_document_and_its_content(project, tmp_path, example_worker):
    snap = tmp_path / "snap"
    snap.mkdir()
    sizes = {f"file {i}.txt": 1000 * i + 7 for i in range(6)}
    for name, size in sizes.items():
        (snap / name).write_bytes(os.urandom(size))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "listed.txt").write_text("the worker opens the source itself")
    project.filesystem("snap", snap, "snapshot: true\n")
    project.filesystem("plain", plain)
    project.cli("sync", "--all", check=True)

    expected = {f"process_document snap:{name}: {name}, {size} bytes" for name, size in sizes.items()}
    expected.add("process_document plain:listed.txt: listed.txt, no content")

    def all_ran() -> bool:
        return expected <= set(example_worker())

    wait_until(all_ran, 90, lambda: f"the tasks' lines; the worker logged:\n{example_worker.log.read_text()}")
    assert "Traceback" not in example_worker.log.read_text()

    (snap / "file 2.txt").unlink()
    project.cli("sync", "snap", check=True)
    wait_until(lambda: "delete_document snap:file 2.txt" in example_worker(), 60,
               lambda: f"the delete task; the worker logged:\n{example_worker.log.read_text()}")
    assert sorted(example_worker()) == sorted([*expected, "delete_document snap:file 2.txt"])
