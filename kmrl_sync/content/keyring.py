"""The encryption key file: several keys, each with a short random id, one of them the primary.

Why a ring and not one key: rotation. New content is written under the primary key; content and
fields written under an older key name that key's id, so they stay readable for as long as the key
stays in the file. Removing a key from the file is how an operator retires it (after rewriting or
deleting what it protects).

The file is JSON (`kmrl-sync keys new FILE` writes it):

    {"kmrl_sync_keyring": 1, "primary": "3f9a2c1e",
     "keys": [{"id": "3f9a2c1e", "created": "2026-12-07T19:50:00Z", "key": "<32 bytes, base64>"}]}

It must be readable by its owner only (mode 0600 or stricter): a key file that group or others may
read is refused, naming the file, rather than used. Every key is registered with redaction as it is
loaded, so it can never leave the process (logs, output, Redis, the store).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kmrl_sync import redaction
from kmrl_sync.config.files import read_limited

__all__ = ["FORMAT_VERSION", "Key", "KeyFileError", "KeyRing", "create_key_file", "load_keyring",
           "register_keys", "rotate_key_file"]

FORMAT_VERSION = 1
KEY_BYTES = 32  # XChaCha20-Poly1305 (libsodium secretstream and AEAD)
ID_BYTES = 4  # ids are 8 hex characters: short, and random, so two key files never mix them up
MAX_KEY_FILE_BYTES = 1 << 20  # thousands of keys; more is not a key file


class KeyFileError(ValueError):
    """The key file cannot be used: missing, readable by others, malformed. The message names it."""


def _derive(secret: bytes, purpose: bytes) -> bytes:
    """A subkey per use of the key (content streams, doc-hash fields): keyed BLAKE2b with a
    personalisation, libsodium's crypto_kdf construction, so the two constructions never share a key."""
    return hashlib.blake2b(b"", digest_size=KEY_BYTES, key=secret, person=purpose).digest()


@dataclass(frozen=True)
class Key:
    id: str  # 8 hex characters
    secret: bytes = field(repr=False)
    created: str = ""

    @property
    def id_bytes(self) -> bytes:
        return bytes.fromhex(self.id)

    @property
    def content_key(self) -> bytes:
        return _derive(self.secret, b"kmrl-content")

    @property
    def field_key(self) -> bytes:
        return _derive(self.secret, b"kmrl-fields")


@dataclass(frozen=True)
class KeyRing:
    path: Path
    keys: dict[str, Key]
    primary_id: str

    @property
    def primary(self) -> Key:
        return self.keys[self.primary_id]

    def get(self, key_id: str) -> Key | None:
        return self.keys.get(key_id)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _new_key(existing: dict[str, Key]) -> Key:
    while True:
        key_id = secrets.token_hex(ID_BYTES)
        if key_id not in existing:
            return Key(key_id, secrets.token_bytes(KEY_BYTES), _now())


def _text_forms(secret: bytes) -> list[str]:
    """The texts a key may be written as: the file's base64, and base64url and hex for good measure."""
    return [base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode(), secret.hex()]


def register_keys(ring: KeyRing) -> None:
    """Every key of the ring, in the texts it could appear as, registered with redaction."""
    for key in ring.keys.values():
        for text in _text_forms(key.secret):
            redaction.register(text, f"key file {ring.path}: key {key.id}")


def _check_private(path: Path, st: os.stat_result) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(f"key file {path} may be read or written by group or others (mode {mode:04o}): "
                           f"refused; make it private: chmod 600 {path}")


def _parse(path: Path, raw: bytes) -> KeyRing:
    def bad(what: str) -> KeyFileError:
        return KeyFileError(f"key file {path} is not a kmrl-sync key file: {what}")

    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("not JSON") from None
    if not isinstance(data, dict) or data.get("kmrl_sync_keyring") != FORMAT_VERSION:
        raise bad(f"'kmrl_sync_keyring' is not {FORMAT_VERSION}")
    entries = data.get("keys")
    if not isinstance(entries, list) or not entries:
        raise bad("'keys' is not a non-empty list")
    keys: dict[str, Key] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise bad(f"keys[{i}] is not an object")
        key_id, text, created = entry.get("id"), entry.get("key"), entry.get("created", "")
        if not isinstance(key_id, str) or not re.fullmatch(f"[0-9a-f]{{{2 * ID_BYTES}}}", key_id):
            raise bad(f"keys[{i}].id is not {2 * ID_BYTES} lower-case hex characters")
        if key_id in keys:
            raise bad(f"keys[{i}].id {key_id} appears twice")
        try:
            secret = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except (binascii.Error, ValueError):
            secret = b""
        if len(secret) != KEY_BYTES:
            raise bad(f"keys[{i}].key (id {key_id}) is not {KEY_BYTES} bytes in base64")
        keys[key_id] = Key(key_id, secret, created if isinstance(created, str) else "")
    primary = data.get("primary")
    if primary not in keys:
        raise bad("'primary' does not name one of its keys")
    return KeyRing(path, keys, primary)


def load_keyring(path: str | os.PathLike[str]) -> KeyRing:
    """Read and check the key file; its keys are registered with redaction before anything else."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (create one: kmrl-sync keys new {path})") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        _check_private(path, st)
    try:
        raw = read_limited(path, MAX_KEY_FILE_BYTES)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except ValueError as exc:
        raise KeyFileError(f"key file {path} {exc}") from None
    ring = _parse(path, raw)
    register_keys(ring)
    return ring


def _serialise(ring: KeyRing) -> bytes:
    data = {
        "kmrl_sync_keyring": FORMAT_VERSION,
        "primary": ring.primary_id,
        "keys": [{"id": k.id, "created": k.created, "key": base64.b64encode(k.secret).decode()}
                 for k in ring.keys.values()],
    }
    return (json.dumps(data, indent=2) + "\n").encode()


def _write_private(path: Path, ring: KeyRing, *, replace: bool, owner: os.stat_result | None = None) -> None:
    """Write the ring beside `path`, mode 0600, synced, then put it in place in one step.

    `replace=False` links the new file to `path` (fails if something is there: `keys new` never
    overwrites); `replace=True` renames over it (`keys rotate`: a reader sees the old ring or the
    new one, never half of one). The owner of the file replaced is kept where we may (root rotating
    the service's key file must leave it readable by the service).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            if owner is not None and (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, owner.st_uid, owner.st_gid)
            data = memoryview(_serialise(ring))
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError if anything is there, atomically
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def create_key_file(path: str | os.PathLike[str]) -> KeyRing:
    """A new key file holding one key, the primary; refuses to overwrite anything at `path`."""
    path = Path(path)
    key = _new_key({})
    ring = KeyRing(path, {key.id: key}, key.id)
    if os.path.lexists(path):
        raise KeyFileError(f"key file {path} already exists: not overwritten (add a key to it: "
                           f"kmrl-sync keys rotate {path})")
    if not path.parent.is_dir():
        raise KeyFileError(f"key file {path}: folder {path.parent} does not exist")
    register_keys(ring)
    try:
        _write_private(path, ring, replace=False)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists: not overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be written: {exc.strerror or exc}") from None
    return ring


@contextlib.contextmanager
def _rotation_lock(key_path: str) -> Iterator[None]:
    """Rotations of the key files in one folder, one at a time (across processes): each reads the
    ring and renames a new one over it, so two at once would each drop the other's key, and
    content already encrypted with a dropped key could never be read again. The lock is the
    folder's own (flock on it): no lock file is left beside the key, and a crashed rotation holds
    nothing."""
    try:
        fd = os.open(os.path.dirname(key_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"key file {key_path}: its folder cannot be opened: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def rotate_key_file(path: str | os.PathLike[str]) -> tuple[KeyRing, Key]:
    """Add a new key as the primary; the older keys stay for reading. Returns the ring and the new key."""
    # A symlinked key file (a mounted secret, a shared folder) is rotated where it lives: renaming
    # over the link would leave the target unrotated.
    real = os.path.realpath(path)
    with _rotation_lock(real):
        ring = load_keyring(real)
        owner = os.stat(ring.path)
        key = _new_key(ring.keys)
        rotated = KeyRing(ring.path, {**ring.keys, key.id: key}, key.id)
        register_keys(rotated)
        try:
            _write_private(ring.path, rotated, replace=True, owner=owner)
        except OSError as exc:
            raise KeyFileError(f"key file {ring.path} cannot be rewritten: {exc.strerror or exc}") from None
    return rotated, key
