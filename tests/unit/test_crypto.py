"""Encryption at rest: the key file, stored content as secretstreams, doc-hash fields.

Tampering is tried at every place it can happen (header, key id, chunk bodies, tags, chunk order,
a cut at every kind of boundary, bytes appended, a whole object swapped for another) and each must
be an error on read, never wrong bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmrl_sync import redaction
from kmrl_sync.content.crypto import (
    ABYTES,
    CHUNK,
    HEADER_BYTES,
    ContentCipher,
    FieldCipher,
    load_ciphers,
    stored_size,
)
from kmrl_sync.content.errors import ContentCorrupt, KeyMissing
from kmrl_sync.content.keyring import KeyFileError, create_key_file, load_keyring, rotate_key_file

SIZES = [0, 1, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    create_key_file(path)
    return path


@pytest.fixture
def cipher(key_file: Path) -> ContentCipher:
    return ContentCipher(load_keyring(key_file))


def encrypt(cipher: ContentCipher, data: bytes, piece: int = 7919) -> bytes:
    return b"".join(cipher.encrypt(data[i:i + piece] for i in range(0, len(data), piece)))


def decrypt(cipher: ContentCipher, stored: bytes, sha256: str | None = None) -> bytes:
    with cipher.decrypting(io.BytesIO(stored), sha256=sha256) as f:
        return f.read()


# --------------------------------------------------------------------------- the key file


def test_new_key_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        ring = create_key_file(tmp_path / "k.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.json").st_mode) == 0o600
    assert len(ring.primary_id) == 8 and list(ring.keys) == [ring.primary_id]
    assert not [p for p in tmp_path.iterdir() if p.name != "k.json"]  # no temporary file left


def test_new_refuses_to_overwrite(key_file: Path) -> None:
    before = key_file.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(key_file)
    assert key_file.read_bytes() == before


def test_rotate_adds_a_primary_and_keeps_the_old_keys(key_file: Path) -> None:
    first = load_keyring(key_file)
    ring, key = rotate_key_file(key_file)
    assert ring.primary_id == key.id != first.primary_id
    assert set(ring.keys) == {first.primary_id, key.id}
    again = load_keyring(key_file)
    assert again.primary_id == key.id
    assert again.keys[first.primary_id].secret == first.primary.secret
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_rotations_at_the_same_instant_keep_every_key(key_file: Path) -> None:
    """Two operators (or a script run twice) rotating one file at once: each rotation's key may
    already encrypt content, so losing one to the other's rename would make that content unreadable."""
    first = load_keyring(key_file)
    start = threading.Barrier(8)
    added: list[str] = []

    def rotate() -> None:
        start.wait()
        added.append(rotate_key_file(key_file)[1].id)

    threads = [threading.Thread(target=rotate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ring = load_keyring(key_file)
    assert set(ring.keys) == {first.primary_id, *added} and len(added) == 8
    assert ring.primary_id in added


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_rotate_keeps_the_owner(key_file: Path) -> None:
    """root rotating the service's key file must leave it readable by the service."""
    os.chown(key_file, 4321, 4321)
    rotate_key_file(key_file)
    st = os.stat(key_file)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4321, 0o600)


def test_rotating_through_a_symlink_rotates_its_target(key_file: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(key_file)
    ring, _key = rotate_key_file(link)
    assert link.is_symlink() and load_keyring(key_file).primary_id == ring.primary_id


def test_new_in_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        create_key_file(tmp_path / "nope" / "k.json")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_a_key_file_others_may_read_is_refused_by_name(key_file: Path, mode: int) -> None:
    os.chmod(key_file, mode)
    with pytest.raises(KeyFileError) as caught:
        load_keyring(key_file)
    assert str(key_file) in str(caught.value) and "chmod 600" in str(caught.value)
    with pytest.raises(KeyFileError):
        rotate_key_file(key_file)


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"kmrl_sync_keyring": 2, "primary": "x", "keys": []}',
    '{"kmrl_sync_keyring": 1, "primary": "0011aabb", "keys": [{"id": "0011aabb", "key": "c2hvcnQ="}]}',
    '{"kmrl_sync_keyring": 1, "primary": "ffffffff", "keys": [{"id": "0011aabb", "key": "'
    + "A" * 43 + '="}]}',
])
def test_a_malformed_key_file_is_refused_by_name(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=str(path)):
        load_keyring(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keyring(tmp_path / "nope.json")


def test_loaded_keys_are_registered_for_redaction(key_file: Path) -> None:
    ring = load_keyring(key_file)
    text = json.loads(key_file.read_text())["keys"][0]["key"]
    assert redaction.redact(f"oops {text} {ring.primary.secret.hex()}") == "oops *** ***"
    assert text not in repr(ring) and ring.primary.secret.hex() not in repr(ring)


# --------------------------------------------------------------------------- content


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(cipher: ContentCipher, size: int) -> None:
    data = os.urandom(size)
    stored = encrypt(cipher, data)
    assert len(stored) == stored_size(size)
    assert size < 64 or data[:64] not in stored  # (a byte or two may occur in any random text)
    assert decrypt(cipher, stored) == data
    assert decrypt(cipher, stored, hashlib.sha256(data).hexdigest()) == data


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3 * CHUNK + 5), pieces=st.lists(st.integers(1, 2 * CHUNK), min_size=1, max_size=8))
def test_round_trip_whatever_the_input_chunks(tmp_path_factory: pytest.TempPathFactory, size: int,
                                              pieces: list[int]) -> None:
    cipher = ContentCipher(create_key_file(tmp_path_factory.mktemp("k") / "k.json"))
    data = os.urandom(size)

    def chunks() -> Iterator[bytes]:
        i = 0
        for n in pieces * (size // max(1, sum(pieces)) + 2):
            if i >= size:
                return
            yield data[i:i + n]
            i += n

    assert decrypt(cipher, b"".join(cipher.encrypt(chunks()))) == data


def test_reader_is_a_file_object(cipher: ContentCipher) -> None:
    data = os.urandom(2 * CHUNK + 100)
    raw = io.BytesIO(encrypt(cipher, data))
    f = cipher.decrypting(raw)
    assert isinstance(f, io.BufferedReader) and f.readable()
    assert f.read(10) == data[:10]
    buf = bytearray(CHUNK)
    assert f.readinto(buf) == CHUNK and bytes(buf) == data[10:10 + CHUNK]
    assert f.read(5) == data[10 + CHUNK:15 + CHUNK]
    assert f.read() == data[15 + CHUNK:]
    assert f.read() == b"" and f.read(3) == b""
    f.close()
    assert raw.closed and f.closed
    with cipher.decrypting(io.BytesIO(encrypt(cipher, data))) as g:
        assert b"".join(iter(lambda: g.read(1000), b"")) == data


def test_rotation_keeps_old_content_readable(key_file: Path) -> None:
    old = ContentCipher(load_keyring(key_file))
    stored_old = encrypt(old, b"written under the first key")
    rotate_key_file(key_file)
    new = ContentCipher(load_keyring(key_file))
    stored_new = encrypt(new, b"written under the second")
    assert stored_old[8:12] != stored_new[8:12]  # each names its key
    assert decrypt(new, stored_old) == b"written under the first key"
    assert decrypt(new, stored_new) == b"written under the second"
    with pytest.raises(KeyMissing, match=new.ring.primary_id):
        decrypt(old, stored_new)  # a key file from before the rotation lacks the new key


def test_wrong_key_with_the_same_id_fails_authentication(tmp_path: Path, key_file: Path) -> None:
    data = json.loads(key_file.read_text())
    data["keys"][0]["key"] = "B" * 43 + "="
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    os.chmod(other, 0o600)
    stored = encrypt(ContentCipher(load_keyring(key_file)), b"secret content" * 100)
    with pytest.raises(ContentCorrupt, match="authentication failed"):
        decrypt(ContentCipher(load_keyring(other)), stored)


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_every_flipped_byte_is_detected(cipher: ContentCipher) -> None:
    data = os.urandom(2 * CHUNK + 300)
    stored = encrypt(cipher, data)
    sealed = CHUNK + ABYTES
    places = [0, 6, 7, 8, 11, 12, 35, HEADER_BYTES, HEADER_BYTES + 5, HEADER_BYTES + sealed - 1,
              HEADER_BYTES + sealed, HEADER_BYTES + 2 * sealed + 3, len(stored) - 1]
    for at in places:
        with pytest.raises((ContentCorrupt, KeyMissing)):
            decrypt(cipher, flipped(stored, at))
    for at in places:  # also when the sha256 is known: still an error, never other bytes
        with pytest.raises((ContentCorrupt, KeyMissing)):
            decrypt(cipher, flipped(stored, at), hashlib.sha256(data).hexdigest())


def test_truncation_is_detected_everywhere(cipher: ContentCipher) -> None:
    data = os.urandom(2 * CHUNK + 300)
    stored = encrypt(cipher, data)
    sealed = CHUNK + ABYTES
    cuts = [12, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 1, HEADER_BYTES + sealed - 1,
            HEADER_BYTES + sealed, HEADER_BYTES + 2 * sealed, len(stored) - 1]
    for cut in cuts:
        with pytest.raises(ContentCorrupt):
            decrypt(cipher, stored[:cut])
    for cut in (0, 5):  # no magic left: read as clear content, which its sha256 refuses
        with pytest.raises(ContentCorrupt, match="sha256"):
            decrypt(cipher, stored[:cut], hashlib.sha256(data).hexdigest())


def test_truncation_at_a_chunk_boundary_of_exact_multiple(cipher: ContentCipher) -> None:
    stored = encrypt(cipher, os.urandom(2 * CHUNK))  # last chunk full and final
    with pytest.raises(ContentCorrupt, match="truncated"):
        decrypt(cipher, stored[:HEADER_BYTES + CHUNK + ABYTES])


def test_reordered_chunks_and_appended_bytes_are_detected(cipher: ContentCipher) -> None:
    data = os.urandom(3 * CHUNK + 10)
    stored = encrypt(cipher, data)
    sealed = CHUNK + ABYTES
    head, c1, c2, rest = (stored[:HEADER_BYTES], stored[HEADER_BYTES:HEADER_BYTES + sealed],
                          stored[HEADER_BYTES + sealed:HEADER_BYTES + 2 * sealed], stored[HEADER_BYTES + 2 * sealed:])
    with pytest.raises(ContentCorrupt):
        decrypt(cipher, head + c2 + c1 + rest)
    with pytest.raises(ContentCorrupt):
        decrypt(cipher, head + c1 + c1 + c2 + rest)
    with pytest.raises(ContentCorrupt):
        decrypt(cipher, stored + b"x")
    exact = encrypt(cipher, data[:CHUNK])  # a full final chunk: the extra byte is read after it
    with pytest.raises(ContentCorrupt, match="follow the final"):
        decrypt(cipher, exact + b"x")
    other = encrypt(cipher, data)  # the same content encrypted again: a chunk of it does not fit in
    with pytest.raises(ContentCorrupt):
        decrypt(cipher, head + other[HEADER_BYTES:HEADER_BYTES + sealed] + c2 + rest)


def test_a_swapped_object_is_detected_by_its_digest(cipher: ContentCipher) -> None:
    a, b = os.urandom(5000), os.urandom(5000)
    stored_b = encrypt(cipher, b)
    with pytest.raises(ContentCorrupt, match="sha256"):
        decrypt(cipher, stored_b, hashlib.sha256(a).hexdigest())


def test_clear_content_is_read_only_for_its_digest(cipher: ContentCipher) -> None:
    data = b"stored before encryption was turned on " * 1000
    assert decrypt(cipher, data, hashlib.sha256(data).hexdigest()) == data
    with pytest.raises(ContentCorrupt, match="not encrypted"):
        decrypt(cipher, data)
    assert decrypt(cipher, b"", hashlib.sha256(b"").hexdigest()) == b""
    with pytest.raises(ContentCorrupt, match="sha256"):
        decrypt(cipher, data + b"!", hashlib.sha256(data).hexdigest())


def test_the_cipher_pickles_and_registers_its_keys_where_it_is_unpickled(cipher: ContentCipher) -> None:
    import pickle

    stored = encrypt(cipher, b"to a worker process")
    text = __import__("base64").b64encode(cipher.ring.primary.secret).decode()
    redaction.forget_all()
    clone = pickle.loads(pickle.dumps(cipher))
    assert decrypt(clone, stored) == b"to a worker process"
    assert redaction.redact(text) == "***"


def test_no_byte_of_a_bad_last_chunk_is_handed_out(cipher: ContentCipher) -> None:
    data = os.urandom(CHUNK + 1000)
    stored = flipped(encrypt(cipher, data), len(encrypt(cipher, data)) - 3)
    f = cipher.decrypting(io.BytesIO(stored))
    got = f.read(CHUNK)
    assert got == data[:CHUNK]  # the first chunk authenticated
    with pytest.raises(ContentCorrupt):
        f.read()


# --------------------------------------------------------------------------- memory


MEMORY_PROBE = textwrap.dedent("""
    import io, os, sys
    from kmrl_sync.content.crypto import ContentCipher
    from kmrl_sync.content.keyring import create_key_file

    total = int(sys.argv[2])
    cipher = ContentCipher(create_key_file(sys.argv[1]))
    block = os.urandom(1 << 20)

    def source():
        for _ in range(total >> 20):
            yield block

    class Pipe(io.RawIOBase):
        # The stored form as a file object, produced on demand from the encrypting generator.
        def __init__(self):
            self.it, self.left = cipher.encrypt(source()), b""
        def readable(self):
            return True
        def readinto(self, b):
            while not self.left:
                self.left = next(self.it, None)
                if self.left is None:
                    self.left = b""
                    return 0
            n = min(len(b), len(self.left))
            b[:n], self.left = self.left[:n], self.left[n:]
            return n

    seen = 0
    with cipher.decrypting(io.BufferedReader(Pipe(), 1 << 16)) as f:
        while chunk := f.read(1 << 20):
            seen += len(chunk)
    # This process's own peak since its exec (VmHWM): ru_maxrss would also count the test process
    # it was forked from (400 MB late in a full run, which failed this test).
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(seen, peak_kb // 1024)
""")


def run_probe(tmp_path: Path, total: int) -> tuple[int, int]:
    key = tmp_path / f"k{total}.json"
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(key), str(total)],
                         capture_output=True, text=True, check=True, timeout=600).stdout.split()
    return int(out[0]), int(out[1])


def test_memory_stays_flat_as_the_content_grows(tmp_path: Path) -> None:
    """Encrypt -> decrypt of 32 MiB and of 256 MiB streamed through, never held: the peak RSS of the
    larger is within a few MB of the smaller (a reader buffering its input would add 224 MB)."""
    small_seen, small_rss = run_probe(tmp_path, 32 << 20)
    big_seen, big_rss = run_probe(tmp_path, 256 << 20)
    assert (small_seen, big_seen) == (32 << 20, 256 << 20)
    assert big_rss - small_rss < 16, (small_rss, big_rss)


@pytest.mark.slow
def test_a_2_gb_stream_in_bounded_memory(tmp_path: Path) -> None:
    seen, rss = run_probe(tmp_path, 2 << 30)
    assert seen == 2 << 30
    assert rss < 100, rss


# --------------------------------------------------------------------------- fields


def test_fields_round_trip_and_are_bound_to_document_and_field(key_file: Path) -> None:
    fields = FieldCipher(load_keyring(key_file), ["subject", "from", "to"])
    subject = fields.encrypt_value("mail:<a@x>", "subject", "Quarterly budget \u00e9")
    assert subject.startswith("enc:1:") and "budget" not in subject
    same = [fields.encrypt_value("mail:<a@x>", "subject", "same") for _ in range(2)]
    assert same[0] != same[1]  # a random nonce each time
    doc = {"subject": subject, "from": fields.encrypt_value("mail:<a@x>", "from", "a@x"), "size": "10"}
    assert fields.decrypt_fields("mail:<a@x>", doc) == {"subject": "Quarterly budget \u00e9", "from": "a@x",
                                                        "size": "10"}
    assert fields.decrypt_fields("mail:<a@x>", {k.encode(): v.encode() for k, v in doc.items()})["from"] == "a@x"
    with pytest.raises(ContentCorrupt, match="mail:<b@x>"):
        fields.decrypt_fields("mail:<b@x>", {"subject": subject})  # moved to another document
    with pytest.raises(ContentCorrupt):
        fields.decrypt_fields("mail:<a@x>", {"to": subject})  # moved to another field
    tampered = subject[:-3] + ("A" if subject[-3] != "A" else "B") + subject[-2:]
    with pytest.raises(ContentCorrupt):
        fields.decrypt_fields("mail:<a@x>", {"subject": tampered})


def test_fields_after_rotation_and_clear_values(key_file: Path) -> None:
    old = FieldCipher(load_keyring(key_file), ["subject"])
    value = old.encrypt_value("d:1", "subject", "hello")
    rotate_key_file(key_file)
    new = FieldCipher(load_keyring(key_file), ["subject"])
    assert new.decrypt_fields("d:1", {"subject": value}) == {"subject": "hello"}
    assert new.encrypt_value("d:1", "subject", "x").split(":")[2] == new.ring.primary_id
    # written before the field was listed: as it is
    assert new.decrypt_fields("d:1", {"subject": "plain"}) == {"subject": "plain"}
    # a field not listed whose clear text merely looks like an encrypted value: left alone
    lookalike = "enc:1:0011aabb:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    assert new.decrypt_fields("d:1", {"title": lookalike}) == {"title": lookalike}
    with pytest.raises(KeyMissing):
        new.decrypt_fields("d:1", {"subject": lookalike})


def test_load_ciphers(key_file: Path) -> None:
    ciphers = load_ciphers(key_file)
    assert ciphers.fields.fields == () and isinstance(ciphers.content, ContentCipher)
    assert load_ciphers(key_file, ["subject"]).fields.fields == ("subject",)
