"""Encryption at rest: stored content as libsodium secretstreams, listed doc-hash fields as AEAD values.

No cipher mode of our own: content goes through libsodium's secretstream (XChaCha20-Poly1305),
fields through its XChaCha20-Poly1305-IETF AEAD, both through PyNaCl's public bindings.

Stored content:

    magic "KMRLENC" | version 0x01 | key id (4 bytes) | secretstream header (24 bytes)
    then chunks of CHUNK plaintext bytes + 17 (tag and MAC) each, the last one (1..CHUNK bytes,
    0 for empty content) marked TAG_FINAL

Every chunk is authenticated with the first 12 bytes (magic, version, key id) as associated data,
and the secretstream chains the chunks: a flipped byte, a cut (also one at a chunk boundary: the
final tag is missing), chunks reordered or bytes appended after the final chunk, a wrong key, all
fail on read with ContentCorrupt; an unknown key id is KeyMissing. What the stream cannot see is a
whole object put under another one's name; a reader given the expected sha256 (the name, in a
content-addressed store) checks it at the end and answers ContentCorrupt too.

Content stored in clear before encryption was turned on (no magic) is read as it is, but only when
the reader is given its sha256 and it matches: clear bytes are trusted for their digest alone
(a content-addressed store passes the digest it opens).

Fields: `enc:1:<key id>:<base64url of nonce + ciphertext>`; the associated data binds the document
id and the field name, so a value copied to another document or field fails to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from nacl import exceptions as nacl_exceptions
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
    crypto_secretstream_xchacha20poly1305_ABYTES,
    crypto_secretstream_xchacha20poly1305_HEADERBYTES,
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_init_push,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_push,
    crypto_secretstream_xchacha20poly1305_state,
    crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
)

from kmrl_sync.content.errors import ContentCorrupt, KeyMissing
from kmrl_sync.content.keyring import ID_BYTES, KeyRing, load_keyring, register_keys

__all__ = ["CHUNK", "MAGIC", "Ciphers", "ContentCipher", "DecryptingReader", "FieldCipher", "load_ciphers",
           "stored_size"]

MAGIC = b"KMRLENC"
VERSION = 1
PREFIX_BYTES = len(MAGIC) + 1 + ID_BYTES  # 12: authenticated with every chunk
HEADER_BYTES = PREFIX_BYTES + crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 36
# 64 KiB of plaintext per chunk: the 17 bytes of tag per chunk are 0.03 %, the Python work per chunk
# (one call each way) is small next to encrypting 64 KiB, and a reader holds one chunk at a time.
CHUNK = 64 * 1024
ABYTES = crypto_secretstream_xchacha20poly1305_ABYTES
TAG_FINAL = crypto_secretstream_xchacha20poly1305_TAG_FINAL
TAG_MESSAGE = crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


def stored_size(size: int) -> int:
    """How many bytes `size` bytes of plaintext take once encrypted."""
    chunks = max(1, -(-size // CHUNK))
    return HEADER_BYTES + size + chunks * ABYTES


class ContentCipher:
    """The store's cipher hook: `encrypt` gives the stored form, `decrypting` reads it back."""

    def __init__(self, ring: KeyRing):
        self.ring = ring
        register_keys(ring)  # again in a worker process the cipher was pickled to (see __reduce__)
        # the derived subkeys, once (a BLAKE2b per key, not per blob)
        self._keys = {key_id: key.content_key for key_id, key in ring.keys.items()}

    def __reduce__(self) -> tuple[type[ContentCipher], tuple[KeyRing]]:
        """Pickled as its key ring (IMAP worker processes reopen the store with the cipher), and
        rebuilt through __init__ there, so the worker scrubs the keys from its output too."""
        return ContentCipher, (self.ring,)

    def encrypt(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The stored form of the plaintext `chunks`, under the primary key, in pieces of about CHUNK.

        Holds at most one CHUNK plus one incoming chunk: the last CHUNK is kept back until the next
        chunk (or the end) shows whether it is the final one.
        """
        key = self.ring.primary
        state = crypto_secretstream_xchacha20poly1305_state()
        header = crypto_secretstream_xchacha20poly1305_init_push(state, self._keys[key.id])
        prefix = MAGIC + bytes([VERSION]) + key.id_bytes
        push = crypto_secretstream_xchacha20poly1305_push
        head = prefix + header  # sent with the first chunk: one write less per blob
        pending = b""
        for chunk in chunks:
            if not chunk:
                continue
            data = pending + bytes(chunk) if pending else bytes(chunk)
            start, end = 0, len(data)
            while end - start > CHUNK:  # more follows this chunk: not the final one
                sealed = push(state, data[start:start + CHUNK], prefix, TAG_MESSAGE)
                if head:
                    sealed, head = head + sealed, b""
                yield sealed
                start += CHUNK
            pending = data[start:] if start else data
        yield head + push(state, pending, prefix, TAG_FINAL)

    def encrypt_bytes(self, data: bytes) -> bytes:
        return b"".join(self.encrypt([data]))

    def decrypting(self, raw: BinaryIO, sha256: str | None = None, name: str = "") -> io.BufferedReader:
        """A binary file object reading the plaintext of the stored form in `raw`.

        `sha256`: the digest the plaintext must have, checked at its end (a swapped object is
        ContentCorrupt too); with it, content stored in clear is read too (the stores pass the
        digest they are asked for). `name` says which object in errors. Closing it closes `raw`.
        """
        return io.BufferedReader(DecryptingReader(raw, self, sha256=sha256, name=name), buffer_size=CHUNK)


class DecryptingReader(io.RawIOBase):
    """Plaintext out of a stored stream, one chunk in memory at a time.

    Every byte handed out belongs to a chunk whose tag was verified; the end of the content is
    reported (b"") only after the final tag, and the sha256 when one was given, were verified. So
    a reader that stops at an error has only ever seen a prefix of the true content.
    """

    def __init__(self, raw: BinaryIO, cipher: ContentCipher, *, sha256: str | None = None, name: str = ""):
        super().__init__()
        self._raw = raw
        self._cipher = cipher
        self._expected = sha256
        self._name = name or getattr(raw, "name", "") or "stored content"
        self._hasher = hashlib.sha256() if sha256 else None
        self._chunk = b""  # the plaintext chunk being handed out
        self._pos = 0
        self._started = False
        self._clear = False
        self._done = False
        self._state: crypto_secretstream_xchacha20poly1305_state | None = None
        self._prefix = b""

    # ------------------------------------------------------------------ io.RawIOBase

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while self._pos >= len(self._chunk):
            if self._done:
                return 0
            self._next_chunk()
        n = min(len(view), len(self._chunk) - self._pos)
        view[:n] = self._chunk[self._pos:self._pos + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        parts = [self._chunk[self._pos:]]
        self._pos = len(self._chunk)
        while not self._done:
            self._next_chunk()
            parts.append(self._chunk)
            self._pos = len(self._chunk)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                self._chunk = b""
                super().close()

    # ------------------------------------------------------------------ the stream

    def _corrupt(self, what: str) -> ContentCorrupt:
        return ContentCorrupt(f"{self._name}: {what}")

    def _read_exactly(self, n: int) -> bytes:
        """Up to `n` bytes of `raw`: fewer only at its end (a raw file may return short reads)."""
        data = self._raw.read(n)
        if data is None:
            raise self._corrupt("the stored content is not readable without blocking")
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = self._raw.read(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def _start(self) -> None:
        self._started = True
        head = self._read_exactly(HEADER_BYTES)
        if not head.startswith(MAGIC):
            self._start_clear(head)
            return
        if len(head) < HEADER_BYTES:
            raise self._corrupt("truncated: the encryption header is cut short")
        if head[len(MAGIC)] != VERSION:
            raise self._corrupt(f"encrypted in an unknown format version {head[len(MAGIC)]}")
        key_id = head[len(MAGIC) + 1:PREFIX_BYTES].hex()
        key = self._cipher._keys.get(key_id)
        if key is None:
            raise KeyMissing(f"{self._name}: encrypted with key {key_id}, which key file "
                             f"{self._cipher.ring.path} does not hold")
        self._prefix = head[:PREFIX_BYTES]
        self._state = crypto_secretstream_xchacha20poly1305_state()
        crypto_secretstream_xchacha20poly1305_init_pull(self._state, head[PREFIX_BYTES:], key)

    def _start_clear(self, head: bytes) -> None:
        """Content stored before encryption was turned on: trusted for its sha256 alone. Without
        one to check, bytes without our header may as well be an encrypted object whose header was
        damaged, and are refused."""
        if self._expected is None:
            raise self._corrupt("not encrypted (no kmrl-sync encryption header), and no sha256 to check it by")
        self._clear = True
        self._deliver(head)

    def _deliver(self, plaintext: bytes) -> None:
        if self._hasher is not None:
            self._hasher.update(plaintext)
        self._chunk, self._pos = plaintext, 0

    def _finish(self) -> None:
        self._done = True
        if self._hasher is not None and self._hasher.hexdigest() != self._expected:
            self._chunk, self._pos = b"", 0
            raise self._corrupt(f"sha256 is {self._hasher.hexdigest()}, expected {self._expected} "
                                "(the object was replaced or swapped)")

    def _next_chunk(self) -> None:
        if not self._started:
            self._start()
            if self._clear:
                return
        if self._clear:
            data = self._read_exactly(CHUNK)
            if data:
                self._deliver(data)
            else:
                self._chunk, self._pos = b"", 0
                self._finish()
            return
        sealed = self._read_exactly(CHUNK + ABYTES)
        if not sealed:
            raise self._corrupt("truncated: the content ends before its final chunk")
        if len(sealed) < ABYTES:
            raise self._corrupt("truncated: a chunk is cut short")
        try:
            plaintext, tag = crypto_secretstream_xchacha20poly1305_pull(self._state, sealed, self._prefix)
        except (nacl_exceptions.RuntimeError, nacl_exceptions.ValueError):
            raise self._corrupt("authentication failed (tampered, truncated, reordered, or another key)") from None
        if tag == TAG_FINAL:
            if self._read_exactly(1):
                raise self._corrupt("bytes follow the final chunk")
            self._deliver(plaintext)
            self._finish()
        elif tag == TAG_MESSAGE and len(sealed) == CHUNK + ABYTES:
            self._deliver(plaintext)
        else:
            raise self._corrupt("truncated: the content ends before its final chunk")


# --------------------------------------------------------------------------- doc-hash fields

FIELD_TAG = "enc:1:"
_FIELD_VALUE = re.compile(r"enc:1:([0-9a-f]{8}):([A-Za-z0-9_-]+)")
_NONCE = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES


def _field_ad(key_id: str, document_id: str, field_name: str) -> bytes:
    # Lengths first: no choice of id and name can produce another pair's associated data.
    doc, name = document_id.encode("utf-8", "surrogateescape"), field_name.encode("utf-8", "surrogateescape")
    return b"kmrl-field\x01" + bytes.fromhex(key_id) + len(doc).to_bytes(4, "big") + doc + name


class FieldCipher:
    """The doc-hash fields listed in `encryption.encrypt_fields`, encrypted before the commit."""

    def __init__(self, ring: KeyRing, fields: Iterable[str]):
        self.ring = ring
        register_keys(ring)
        self.fields = tuple(fields)
        self._keys = {key_id: key.field_key for key_id, key in ring.keys.items()}

    def encrypt_value(self, document_id: str, field_name: str, text: str) -> str:
        """`text` (the field as it would be stored) in its encrypted form, bound to this document and field."""
        key = self.ring.primary
        nonce = os.urandom(_NONCE)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            text.encode("utf-8", "surrogateescape"), _field_ad(key.id, document_id, field_name), nonce,
            self._keys[key.id])
        return f"{FIELD_TAG}{key.id}:{base64.urlsafe_b64encode(nonce + sealed).rstrip(b'=').decode()}"

    def decrypt_value(self, document_id: str, field_name: str, value: str) -> str:
        match = _FIELD_VALUE.fullmatch(value)
        if match is None:
            raise ContentCorrupt(f"{document_id}: field {field_name} is not an encrypted value")
        key_id, text = match.groups()
        key = self._keys.get(key_id)
        if key is None:
            raise KeyMissing(f"{document_id}: field {field_name} is encrypted with key {key_id}, which key "
                             f"file {self.ring.path} does not hold")
        try:
            blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            plain = crypto_aead_xchacha20poly1305_ietf_decrypt(
                blob[_NONCE:], _field_ad(key_id, document_id, field_name), blob[:_NONCE], key)
        except (binascii.Error, ValueError, nacl_exceptions.CryptoError, nacl_exceptions.ValueError):
            raise ContentCorrupt(f"{document_id}: field {field_name} fails authentication (tampered, moved "
                                 "from another document or field, or another key)") from None
        return plain.decode("utf-8", "surrogateescape")

    def decrypt_fields(self, document_id: str, fields: dict[str, str]) -> dict[str, str]:
        """A document's hash with its encrypted fields decrypted (a new dict; bytes keys and values
        as HGETALL gives them are decoded).

        A field listed in `encrypt_fields` holding an encrypted value must decrypt, else
        ContentCorrupt; one holding clear text was written before the field was listed and is
        returned as it is. A field not listed is decrypted when it holds a value that authenticates
        (listed when it was written), and otherwise left alone: clear text that merely looks like an
        encrypted value (a mail subject can say anything) is not an error.
        """
        out: dict[str, str] = {}
        listed = self.fields
        for name, value in fields.items():
            if isinstance(name, bytes):
                name = name.decode("utf-8", "surrogateescape")
            if isinstance(value, bytes):
                value = value.decode("utf-8", "surrogateescape")
            if isinstance(value, str) and value.startswith(FIELD_TAG) and _FIELD_VALUE.fullmatch(value):
                if name in listed:
                    value = self.decrypt_value(document_id, name, value)
                else:
                    with contextlib.suppress(ContentCorrupt, KeyMissing):
                        value = self.decrypt_value(document_id, name, value)
            out[name] = value
        return out


@dataclass(frozen=True)
class Ciphers:
    """What one key file gives: the store's content cipher and the field cipher (which encrypts the
    fields listed, if any, and decrypts every encrypted value that authenticates, listed or not)."""

    content: ContentCipher
    fields: FieldCipher


def load_ciphers(key_file: str | os.PathLike[str], encrypt_fields: Iterable[str] = ()) -> Ciphers:
    """The ciphers for `encryption: {key_file, encrypt_fields}` (the engine and the hub both use this).

    Raises KeyFileError (a ValueError naming the file) when the key file cannot be used.
    """
    ring = load_keyring(key_file)
    return Ciphers(ContentCipher(ring), FieldCipher(ring, encrypt_fields))
