"""The reader behind the filesystem connector: what it reports for each kind of path it is given."""

from __future__ import annotations

import hashlib
import os

from kmrl_sync.connectors.filesystem.hashing import READ_WHOLE, digest_file


def test_regular_file_gives_digest_bytes_and_its_fstat(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    st = path.stat()
    assert digest_file(str(path)) == (hashlib.sha256(b"hello").hexdigest(), 5, "",
                                      (5, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev))


def test_large_file_is_read_in_chunks(tmp_path):
    data = os.urandom(1024) * (READ_WHOLE // 1024 + 3)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    digest, size, error, meta = digest_file(str(path))
    assert (digest, size, error, meta[0]) == (hashlib.sha256(data).hexdigest(), len(data), "", len(data))


def test_over_the_cap_is_not_read_but_reports_its_size(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 100)
    digest, size, error, meta = digest_file(str(path), max_size=99)
    assert (digest, size, error, meta[0]) == (None, 0, "", 100)


def test_vanished_file_is_silent(tmp_path):
    assert digest_file(str(tmp_path / "gone")) == (None, 0, "", None)


def test_a_file_swapped_for_a_symlink_is_not_followed(tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"outside the root")
    link = tmp_path / "doc.txt"
    link.symlink_to(outside)
    digest, _errno, error, meta = digest_file(str(link))
    assert digest is None and meta is None and error  # ELOOP, reported as unreadable


def test_a_file_swapped_for_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "doc.txt"
    os.mkfifo(fifo)
    assert digest_file(str(fifo)) == (None, 0, "not a regular file any more", None)
