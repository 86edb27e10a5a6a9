"""The blob store at its edges: where `blob` points, and a store that is full.

Findings: with a relative `state_dir`, a document's `blob` was stored relative to wherever `sync`
ran (`state/blobs/sha256/...`), so a worker elsewhere could not open it; and a full store was
reported per document as "cannot read" (the run went on as `partial`) instead of failing the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmrl_sync.content.folder import FolderStore
from tests.integration.imap_helpers import bulk_append, write_connector
from tests.support.blobs import blob_path, read_blob
from tests.support.documents import document

# --------------------------------------------------------------------------- absolute URIs


def _relative_project(root: Path, redis_url: str, state_dir: str) -> None:
    (root / "connectors").mkdir(parents=True)
    (root / "sync.yaml").write_text(textwrap.dedent(f"""\
        redis: {{url: "{redis_url}", key_prefix: kmrl}}
        state_dir: "{state_dir}"
        connectors_dir: connectors
        log: {{level: warning, format: json}}
        """))


@pytest.mark.parametrize("state_dir", ["state", "./odd #state?%20 [x]", "../sibling state"])
def test_blob_is_an_absolute_file_uri_whatever_the_working_directory(tmp_path, redis_server, redis_client, state_dir):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_bytes(b"snapshot me")
    root = tmp_path / "project"
    _relative_project(root, redis_server.url, state_dir)
    (root / "connectors" / "fs.yaml").write_text(f"type: filesystem\noptions:\n  root: {docs}\n  snapshot: true\n")
    result = subprocess.run([sys.executable, "-m", "kmrl_sync", "sync", "fs", "-c", "sync.yaml"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    blob = document(redis_client, "fs:a.txt")["blob"]
    assert blob.startswith("file:///")
    assert read_blob(blob) == b"snapshot me"  # opened from the test's working directory, not root
    assert blob_path(blob).is_relative_to((root / state_dir).resolve())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=40)
       .filter(lambda name: name not in (".", "..") and len(name.encode()) < 200))
def test_a_store_folder_of_any_name_gives_uris_that_name_it(tmp_path, name):
    store = FolderStore(tmp_path / name / "blobs")
    ref = store.put_bytes(name.encode())
    assert ref.uri.startswith("file:///") and ref.uri.isascii() and "#" not in ref.uri and "?" not in ref.uri
    assert blob_path(ref.uri) == (tmp_path / name / "blobs").resolve() / "sha256" / ref.sha256[:2] / ref.sha256
    assert read_blob(ref.uri) == name.encode()


# --------------------------------------------------------------------------- a full store


def _can_mount_tmpfs() -> str | None:
    if shutil.which("unshare") is None:
        return "util-linux `unshare` is not installed"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a small tmpfs in a private mount namespace (needs root): {probe.stderr.strip()}"
    return None


NO_TMPFS = _can_mount_tmpfs()


def _sync_on_a_full_store(project, name: str) -> subprocess.CompletedProcess[str]:
    """`kmrl-sync sync NAME` with the blob store on a 256 KiB tmpfs that only this run sees."""
    blobs = project.root / "state" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@"'
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, str(blobs), sys.executable, "-m", "kmrl_sync",
                           "sync", name, "-c", str(project.config)],
                          cwd=project.root, capture_output=True, text=True, timeout=300)


def _assert_failed_as_a_full_store(project, result, redis_client) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"cannot write to the blob store {project.root / 'state' / 'blobs'}: disk full" in result.stdout
    assert "cannot read" not in out and "Traceback" not in out and "crashed" not in out
    assert redis_client.llen("document_processing") == 0  # nothing committed without its content


@pytest.mark.skipif(NO_TMPFS is not None, reason=str(NO_TMPFS))
def test_a_full_store_fails_a_folder_snapshot_naming_the_store(project, tmp_path, redis_client):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"f{i}.bin").write_bytes(hashlib.sha256(str(i).encode()).digest() * 2048)  # 64 KiB each
    project.filesystem("fs", docs, "snapshot: true\n")
    result = _sync_on_a_full_store(project, "fs")
    _assert_failed_as_a_full_store(project, result, redis_client)
    assert redis_client.hget("kmrl:{fs}:stats", "last_run_result") == b"failed"


@pytest.mark.skipif(NO_TMPFS is not None, reason=str(NO_TMPFS))
def test_a_full_store_fails_a_mail_sync_naming_the_store(project, dovecot_mailbox, redis_client):
    """Mail content is written on the IMAP connector's writer threads: their error fails the run too."""
    body = (b"x" * 76 + b"\r\n") * 800  # about 62 KiB
    mails = [b"Message-ID: <m%d@example.org>\r\nSubject: big %d\r\n\r\n" % (i, i) + body for i in range(12)]
    bulk_append(dovecot_mailbox, "INBOX", mails)
    write_connector(project, "mail", dovecot_mailbox, folders="[INBOX]")
    result = _sync_on_a_full_store(project, "mail")
    _assert_failed_as_a_full_store(project, result, redis_client)
    assert not os.path.ismount(project.root / "state" / "blobs")  # the tmpfs was this run's alone
